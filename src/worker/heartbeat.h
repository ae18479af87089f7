/* heartbeat.h — the worker's heartbeat: a thread of its own that reports,
 * every interval, how many decode steps the main thread has completed and
 * whether it has work, on a socket that carries nothing else.  "Steps" are
 * units of progress: decode steps and the graph nodes computed within one.
 *
 * It answers whatever the decoding thread is doing, so the daemon tells a
 * stopped or wedged process (no heartbeat) from a slow one, and a stuck
 * decode (heartbeats whose step count does not move while work is pending)
 * from a busy one.  Heartbeats are sent without blocking: when the daemon
 * does not read them they are dropped, which it notices.
 *
 * Thread-safety: lyra_heartbeat_step/set_busy are called by the decoding
 * thread (lock-free); start/stop by the main thread. */
#ifndef LYRA_HEARTBEAT_H
#define LYRA_HEARTBEAT_H

#include <stdbool.h>

struct lyra_heartbeat;

/* Starts beating on fd every interval_ms (first beat at once).  fd is
 * borrowed.  Returns NULL when the thread cannot start. */
struct lyra_heartbeat *lyra_heartbeat_start(int fd, int interval_ms);

/* Counts progress: a completed decode step, or a node of a decode's graph
 * (lock-free; called often). */
void lyra_heartbeat_step(struct lyra_heartbeat *hb);

/* Records whether requests are running or waiting. */
void lyra_heartbeat_set_busy(struct lyra_heartbeat *hb, bool busy);

/* Stops and joins the thread, frees hb.  NULL is a no-op. */
void lyra_heartbeat_stop(struct lyra_heartbeat *hb);

#endif
