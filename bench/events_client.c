/* events_client.c — the WebSocket side of bench/events.sh: one process,
 * one epoll loop, N raw WebSocket clients of GET /events/ws (server frames
 * are unmasked and small; this reader only needs to split text frames).
 *
 *   events_client latency PORT N M   N clients, M events published one at
 *       a time (POST /events with the publish time in data); prints p50/p99
 *       of publish → receive over all N*M deliveries, in ms.
 *   events_client hold PORT N SECS   N clients held open SECS seconds.
 *   events_client replay PORT MISSED N clients 1: publishes MISSED events
 *       while disconnected, reconnects with since=; prints the ms from the
 *       upgrade's send to the last missed event.
 * Build: cc -O2 -o build/events_client bench/events_client.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Opens a WebSocket and reads the 101's headers. */
static int ws_open(const char *query)
{
    int fd = dial();
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /events/ws%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     query);
    if (write(fd, req, (size_t)n) != n)
        exit(1);
    char h[4];
    size_t got = 0;
    char c;
    while (read(fd, &c, 1) == 1) {
        h[got++ % 4] = c;
        if (got >= 4 && h[got % 4] == '\r' && h[(got + 1) % 4] == '\n' && h[(got + 2) % 4] == '\r' &&
            h[(got + 3) % 4] == '\n')
            return fd;
    }
    fprintf(stderr, "handshake failed\n");
    exit(1);
}

static void post_event(const char *type, const char *data)
{
    int fd = dial();
    char body[256], req[512];
    int bl = snprintf(body, sizeof body, "{\"type\":\"%s\",\"data\":%s}", type, data);
    int n = snprintf(req, sizeof req,
                     "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     bl, body);
    if (write(fd, req, (size_t)n) != n)
        exit(1);
    char buf[1024];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
}

struct conn {
    int fd;
    char buf[1 << 16];
    size_t len;
};

/* Calls on_msg for each complete text frame in c's buffer. */
static void frames(struct conn *c, void (*on_msg)(const char *p, size_t n, void *ud), void *ud)
{
    size_t off = 0;
    while (c->len - off >= 2) {
        unsigned char *b = (unsigned char *)c->buf + off;
        size_t hl = 2, pl = b[1] & 0x7f;
        if (pl == 126) {
            if (c->len - off < 4)
                break;
            pl = (size_t)b[2] << 8 | b[3];
            hl = 4;
        } else if (pl == 127) {
            if (c->len - off < 10)
                break;
            pl = 0;
            for (int i = 0; i < 8; i++)
                pl = pl << 8 | b[2 + i];
            hl = 10;
        }
        if (c->len - off < hl + pl)
            break;
        if ((b[0] & 0x0f) == 1)
            on_msg((char *)b + hl, pl, ud);
        off += hl + pl;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct lat {
    double *v;
    size_t n;
};

static void on_lat(const char *p, size_t n, void *ud)
{
    struct lat *l = ud;
    const char *t = memmem(p, n, "\"t\":", 4);
    if (t)
        l->v[l->n++] = now_ms() - strtod(t + 4, NULL);
}

static void on_count(const char *p, size_t n, void *ud)
{
    (*(long *)ud)++;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: events_client latency|hold|replay PORT A B\n");
        return 2;
    }
    port = atoi(argv[2]);
    long a = atol(argv[3]), b = atol(argv[4]);
    int ep = epoll_create1(0);
    if (strcmp(argv[1], "latency") == 0 || strcmp(argv[1], "hold") == 0) {
        long n = a;
        struct conn *cs = calloc((size_t)n, sizeof *cs);
        for (long i = 0; i < n; i++) {
            cs[i].fd = ws_open("?types=custom.bench");
            struct epoll_event e = {.events = EPOLLIN, .data.ptr = &cs[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e);
        }
        if (strcmp(argv[1], "hold") == 0) {
            printf("held %ld\n", n);
            fflush(stdout);
            sleep((unsigned)b);
            return 0;
        }
        usleep(200000); /* every subscription made */
        struct lat l = {calloc((size_t)(n * b), sizeof(double)), 0};
        struct epoll_event evs[256];
        for (long k = 0; k < b; k++) {
            size_t want = l.n + (size_t)n;
            char data[64];
            snprintf(data, sizeof data, "{\"t\":%.3f}", now_ms());
            post_event("custom.bench", data);
            double deadline = now_ms() + 2000;
            while (l.n < want && now_ms() < deadline) {
                int r = epoll_wait(ep, evs, 256, 100);
                for (int i = 0; i < r; i++) {
                    struct conn *c = evs[i].data.ptr;
                    ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
                    if (got > 0) {
                        c->len += (size_t)got;
                        frames(c, on_lat, &l);
                    }
                }
            }
        }
        qsort(l.v, l.n, sizeof *l.v, cmp);
        printf("deliveries %zu of %ld  p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", l.n, n * b,
               l.n ? l.v[l.n / 2] : 0, l.n ? l.v[(size_t)(l.n * 0.99)] : 0, l.n ? l.v[l.n - 1] : 0);
        return l.n == (size_t)(n * b) ? 0 : 1;
    }
    /* replay */
    long missed = a;
    (void)b;
    post_event("custom.replay", "{}");
    /* the seq of that event: read it back from a since=0 stream's first frame is
     * overkill; ask /events/recent instead */
    int fd = dial();
    const char *rq = "GET /events/recent?types=custom.replay&since=0&limit=100000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n";
    if (write(fd, rq, strlen(rq)) < 0)
        return 1;
    static char resp[1 << 20];
    size_t rl = 0;
    ssize_t r;
    while ((r = read(fd, resp + rl, sizeof resp - rl - 1)) > 0)
        rl += (size_t)r;
    resp[rl] = '\0';
    close(fd);
    char *last = NULL;
    for (char *p = resp; (p = strstr(p, "\"seq\":")); p++)
        last = p;
    unsigned long long since = last ? strtoull(last + 6, NULL, 10) : 0;
    for (long i = 0; i < missed; i++)
        post_event("custom.replay", "{\"x\":1}");
    char q[96];
    snprintf(q, sizeof q, "?since=%llu&types=custom.replay", since);
    double t0 = now_ms();
    struct conn *c = calloc(1, sizeof *c);
    c->fd = ws_open(q);
    long count = 0;
    while (count < missed) {
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0)
            break;
        ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
        if (got <= 0)
            break;
        c->len += (size_t)got;
        frames(c, on_count, &count);
    }
    printf("replayed %ld of %ld missed events in %.2f ms after the upgrade request\n", count, missed,
           now_ms() - t0);
    return count == missed ? 0 : 1;
}
