/* worker.h — `lyra worker`: the process that serves one model for the
 * daemon over a socket (protocol and design in docs/worker.md). */
#ifndef LYRA_WORKER_H
#define LYRA_WORKER_H

/* Runs the worker; argv[0] is "worker".  Returns the process exit status:
 * 0 after the daemon closed the socket or on SIGTERM, 1 when the model
 * cannot be served (after a "fatal" message) or I/O fails, 2 for a usage
 * error or a protocol violation by the daemon. */
int lyra_cmd_worker(int argc, char **argv);

#endif
