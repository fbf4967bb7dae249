/* steady_probe: a compiled receiver for the steady-rate scenario of `make bench`.
 *
 * One process, one thread, epoll, non-blocking sockets, libc and libcrypto (SHA-1 and
 * base64 of the WebSocket handshake) only. It opens `clients` WebSocket connections to a
 * seed-protocol server (greeting "Hello, welcome\n"; a text T from a client goes to every
 * client as "from <id>: T", the sender also gets "server: T"), lets the first `senders`
 * clients send at a fixed total rate and times every delivery, so that the p99 it reports
 * is the server's and not the receiver's own reading delay (the Python generator spends
 * about 12 us of CPU per delivery; this one prints its own cost with every window).
 *
 *   gcc -O2 -Wall -Wextra -std=c11 -o steady_probe steady_probe.c -lcrypto
 *   steady_probe [options] HOST PORT
 *
 *   --clients N        connections (default 1000); at most 64 handshakes in flight
 *   --senders N        the first N clients send (default 10)
 *   --size N           message body bytes (default 100, at least 40)
 *   --rates R1,R2,...  messages/s over all senders, one window each (default 20,80)
 *   --warmup S         seconds of sending before each measured window (default 1)
 *   --window S         measured seconds per rate (default 2.5)
 *   --path P           request path (default "/")
 *   --setup-timeout S  connecting and greeting every client (default 30)
 *   --drain S          after each window, how long to wait for the last deliveries (default 3)
 *
 * Bodies are the Python generator's (src/hubbub/bench/checker.py): filler(size) then
 * "%020d|%04d|%010d" of CLOCK_MONOTONIC ns, sender id and per-sender sequence from 1.
 * Each sender sends every senders/rate seconds, the senders evenly phased, open loop
 * (a late send goes out at once; none is skipped). For each rate: warm-up, measured
 * window, then sending stops until every client has every message or --drain passes.
 * A latency is recorded for each delivery of a message sent inside the window
 * (now - its send time); per (receiver, sender) the sequence must be last + 1: a gap
 * counts its numbers as missing, a missing number arriving later is reordered, anything
 * else at or below the last is duplicated (a number more than 64 behind the last: too
 * old to tell, counted as duplicated). Lost, after the drain: numbers still missing plus
 * those sent and never reached.
 *
 * Output, one JSON object per line on stdout, flushed:
 *   {"setup": ...}                          connections made, greeted, failed, seconds
 *   {"window":"start","rate":R}             a measured window begins (sample /proc now)
 *   {"window":"end","rate":R}               ... and ends (the sending window)
 *   {"rate":R, ...}                         its figures, after the drain
 *   {"done":true, ...}                      whole-run counts (warm-ups included)
 * Exit status: 0 after a run (check its "ok"), 1 if the set-up failed, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (64 * 1024)
#define WBUF (64 * 1024)
#define MAX_INFLIGHT 64
#define TAIL 36
#define MAX_RATES 16
#define GREETING "Hello, welcome\n"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum { ST_IDLE, ST_CONNECTING, ST_UPGRADING, ST_GREETING, ST_OPEN, ST_DEAD };

struct conn {
    int fd;
    int state;
    int sid; /* sender id, -1 if it only receives */
    int want_out;
    char accept[32];
    unsigned char *rbuf;
    size_t rlen;
    unsigned char *wbuf;
    size_t wlen;
    uint32_t *last;  /* per sender: highest sequence seen */
    uint64_t *seen;  /* per sender: bit i = (last - i) received */
    uint64_t next_send; /* senders: when the next message goes (ns) */
};

static struct {
    const char *host, *path;
    int port, clients, senders, size;
    double rates[MAX_RATES];
    int nrates;
    double warmup, window, setup_timeout, drain;
} opt = {NULL, "/", 0, 1000, 10, 100, {20, 80}, 2, 1.0, 2.5, 30.0, 3.0};

static struct conn *conns;
static int epfd;
static unsigned char *head; /* filler(size) */
static uint32_t *sent;      /* per sender: messages sent */
static uint64_t rng;
/* counters */
static uint64_t greeted, failed, errors, echoes, others, pings;
static uint64_t duplicated, reordered, gaps, delivered_total, received_in_window;
static int measuring;
static uint64_t win_start, win_end = UINT64_MAX, sent_in_window;
static int64_t *lat;
static size_t lat_cap, lat_n, lat_overflow;
static int live_upgrades; /* connecting or upgrading */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU seconds of this process: user time, and system time in *sys. */
static double cpu_s(double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *sys = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

static uint32_t rand32(void) { /* xorshift64*, seeded from getrandom */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 2685821657736338717ull) >> 32);
}

static void kill_conn(struct conn *c, int is_error) {
    if (c->state == ST_DEAD)
        return;
    if (c->state == ST_CONNECTING || c->state == ST_UPGRADING)
        live_upgrades--;
    if (c->state != ST_OPEN && c->state != ST_IDLE)
        failed++;
    if (is_error && c->state == ST_OPEN)
        errors++;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_DEAD;
}

static void set_events(struct conn *c, int out) {
    if (c->want_out == out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void flush_out(struct conn *c) {
    while (c->wlen > 0) {
        ssize_t n = write(c->fd, c->wbuf, c->wlen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            kill_conn(c, 1);
            return;
        }
        memmove(c->wbuf, c->wbuf + n, c->wlen - (size_t)n);
        c->wlen -= (size_t)n;
    }
    set_events(c, c->wlen > 0);
}

/* Queue bytes (written at once when nothing waits before them). */
static void conn_write(struct conn *c, const void *data, size_t len) {
    if (c->state == ST_DEAD)
        return;
    if (c->wlen + len > WBUF) {
        kill_conn(c, 1);
        return;
    }
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += len;
    flush_out(c);
}

/* A masked client frame (FIN set). */
static void send_frame(struct conn *c, int opcode, const unsigned char *payload, size_t len) {
    unsigned char frame[16 + 66000];
    size_t h = 0;
    if (len > 65535)
        return;
    frame[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        frame[h++] = (unsigned char)(0x80 | len);
    } else {
        frame[h++] = 0x80 | 126;
        frame[h++] = (unsigned char)(len >> 8);
        frame[h++] = (unsigned char)len;
    }
    uint32_t m = rand32();
    unsigned char mask[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                             (unsigned char)(m >> 24)};
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        frame[h + i] = payload[i] ^ mask[i & 3];
    conn_write(c, frame, h + len);
}

static void send_message(struct conn *c) {
    unsigned char body[66000];
    size_t n = (size_t)opt.size - TAIL;
    memcpy(body, head, n);
    uint32_t seq = ++sent[c->sid];
    uint64_t ts = now_ns();
    char tail[TAIL + 8];
    snprintf(tail, sizeof tail, "%020" PRIu64 "|%04d|%010" PRIu32, ts, c->sid, seq);
    memcpy(body + n, tail, TAIL);
    if (measuring && ts >= win_start && ts < win_end)
        sent_in_window++;
    send_frame(c, 0x1, body, (size_t)opt.size);
}

static void make_key(struct conn *c, char key[32]) {
    unsigned char raw[16], digest[SHA_DIGEST_LENGTH];
    char cat[64 + 40];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        for (int i = 0; i < 16; i++)
            raw[i] = (unsigned char)rand32();
    EVP_EncodeBlock((unsigned char *)key, raw, 16);
    snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)cat, strlen(cat), digest);
    EVP_EncodeBlock((unsigned char *)c->accept, digest, SHA_DIGEST_LENGTH);
}

static void start_connect(struct conn *c, const struct sockaddr_in *addr) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->state = ST_CONNECTING;
        live_upgrades++;
        kill_conn(c, 0);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    live_upgrades++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0 ||
        (connect(c->fd, (const struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS))
        kill_conn(c, 0);
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        kill_conn(c, 0);
        return;
    }
    char key[32], req[1024];
    make_key(c, key);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt.path, opt.host, opt.port, key);
    c->state = ST_UPGRADING;
    conn_write(c, req, (size_t)n);
}

/* The 101 answer, once whole in rbuf; returns bytes used, 0 if incomplete, -1 if bad. */
static long parse_upgrade(struct conn *c) {
    unsigned char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (end == NULL)
        return c->rlen >= 8192 ? -1 : 0;
    size_t used = (size_t)(end - c->rbuf) + 4;
    *end = '\0';
    char *text = (char *)c->rbuf;
    if (strncmp(text, "HTTP/1.1 101", 12) != 0)
        return -1;
    for (char *line = strstr(text, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        const char *name = "sec-websocket-accept:";
        if (strncasecmp(line + 2, name, strlen(name)) == 0) {
            char *v = line + 2 + strlen(name);
            while (*v == ' ' || *v == '\t')
                v++;
            return strncmp(v, c->accept, 28) == 0 ? (long)used : -1;
        }
    }
    return -1;
}

static uint64_t digits(const unsigned char *p, int n, int *bad) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            *bad = 1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    return v;
}

static void on_delivery(struct conn *c, const unsigned char *p, size_t len, uint64_t now) {
    if (len < 5 + TAIL || p[len - 16] != '|' || p[len - 11] != '|') {
        errors++;
        return;
    }
    int bad = 0;
    uint64_t ts = digits(p + len - 36, 20, &bad);
    uint64_t sid = digits(p + len - 15, 4, &bad);
    uint64_t seq = digits(p + len - 10, 10, &bad);
    if (bad || sid >= (uint64_t)opt.senders || seq == 0 || seq > UINT32_MAX) {
        errors++;
        return;
    }
    uint32_t top = c->last[sid];
    uint64_t *seen = &c->seen[sid];
    if (seq == (uint64_t)top + 1) {
        c->last[sid] = (uint32_t)seq;
        *seen = (*seen << 1) | 1;
    } else if (seq > top) {
        uint64_t g = seq - top;
        gaps += g - 1;
        *seen = (g >= 64 ? 0 : *seen << g) | 1;
        c->last[sid] = (uint32_t)seq;
    } else {
        uint64_t d = top - seq;
        if (d < 64 && !(*seen & (1ull << d))) {
            *seen |= 1ull << d;
            reordered++;
            gaps--;
        } else {
            duplicated++;
            return;
        }
    }
    delivered_total++;
    if (measuring) {
        if (now < win_end)
            received_in_window++;
        if (ts >= win_start && ts < win_end) {
            if (lat_n < lat_cap)
                lat[lat_n++] = (int64_t)(now - ts);
            else
                lat_overflow++;
        }
    }
}

/* Parse whole frames out of rbuf. */
static void parse_frames(struct conn *c, uint64_t now) {
    size_t off = 0;
    while (c->state != ST_DEAD) {
        unsigned char *p = c->rbuf + off;
        size_t avail = c->rlen - off;
        if (avail < 2)
            break;
        int fin = p[0] & 0x80, opcode = p[0] & 0x0f;
        if (p[1] & 0x80) { /* servers never mask */
            kill_conn(c, 1);
            return;
        }
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (avail < 4)
                break;
            len = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | p[2 + i];
            h = 10;
        }
        if (len > RBUF - h) { /* could never fit the buffer */
            kill_conn(c, 1);
            return;
        }
        if (avail < h + len)
            break;
        const unsigned char *pl = p + h;
        off += h + (size_t)len;
        if (!fin) {
            errors++;
        } else if (opcode == 0x1 && len >= 5 && memcmp(pl, "from ", 5) == 0) {
            on_delivery(c, pl, (size_t)len, now);
        } else if (opcode == 0x1 && len >= 8 && memcmp(pl, "server: ", 8) == 0) {
            echoes++;
        } else if (opcode == 0x1 && len == strlen(GREETING) && memcmp(pl, GREETING, len) == 0) {
            if (c->state == ST_GREETING) {
                c->state = ST_OPEN;
                greeted++;
            } else {
                errors++;
            }
        } else if (opcode == 0x9) {
            send_frame(c, 0xA, pl, (size_t)len);
            pings++;
        } else if (opcode == 0x8) {
            kill_conn(c, 1);
            return;
        } else if (opcode != 0xA) {
            others++;
        }
    }
    if (c->state == ST_DEAD)
        return;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
}

static void on_readable(struct conn *c, uint64_t now) {
    if (c->rlen == RBUF) {
        kill_conn(c, 1);
        return;
    }
    ssize_t n = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        kill_conn(c, 1);
        return;
    }
    c->rlen += (size_t)n;
    if (c->state == ST_UPGRADING) {
        long used = parse_upgrade(c);
        if (used == 0)
            return;
        if (used < 0) {
            kill_conn(c, 0);
            return;
        }
        memmove(c->rbuf, c->rbuf + used, c->rlen - (size_t)used);
        c->rlen -= (size_t)used;
        c->state = ST_GREETING;
        live_upgrades--;
    }
    parse_frames(c, now);
}

static void on_event(struct epoll_event *ev, uint64_t now) {
    struct conn *c = ev->data.ptr;
    if (c->state == ST_DEAD)
        return;
    if (c->state == ST_CONNECTING) {
        if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connected(c);
        return;
    }
    if (ev->events & EPOLLOUT)
        flush_out(c);
    if (c->state != ST_DEAD && (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        on_readable(c, now);
}

/* Handle events until `until` (ns) or `done()`; senders send while `sending` is set. */
static uint64_t interval_ns; /* per sender, at the current rate */

static void pump(uint64_t until, int sending, int (*done)(void)) {
    struct epoll_event evs[512];
    for (;;) {
        uint64_t now = now_ns();
        uint64_t wake = until;
        if (sending) {
            for (int s = 0; s < opt.senders; s++) {
                struct conn *c = &conns[s];
                if (c->state != ST_OPEN)
                    continue;
                for (int k = 0; k < 1000 && c->next_send <= now; k++) {
                    send_message(c);
                    c->next_send += interval_ns;
                }
                if (c->next_send < wake)
                    wake = c->next_send;
            }
        }
        if (now >= until || (done != NULL && done()))
            return;
        uint64_t wait_ns = wake > now ? wake - now : 0;
        int timeout = (int)((wait_ns + 999999) / 1000000);
        int n = epoll_wait(epfd, evs, 512, timeout);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        now = now_ns();
        for (int i = 0; i < n; i++)
            on_event(&evs[i], now);
    }
}

static struct sockaddr_in target;
static int next_conn;

static int setup_done(void) {
    while (live_upgrades < MAX_INFLIGHT && next_conn < opt.clients)
        start_connect(&conns[next_conn++], &target);
    if (next_conn < opt.clients)
        return 0;
    for (int i = 0; i < opt.clients; i++)
        if (conns[i].state != ST_OPEN && conns[i].state != ST_DEAD)
            return 0;
    return 1;
}

static uint64_t expected_total;

static int open_clients(void) {
    int n = 0;
    for (int i = 0; i < opt.clients; i++)
        n += conns[i].state == ST_OPEN;
    return n;
}

static int drained(void) { return delivered_total >= expected_total; }

static uint64_t total_sent(void) {
    uint64_t n = 0;
    for (int s = 0; s < opt.senders; s++)
        n += sent[s];
    return n;
}

/* Numbers still missing plus those sent and never reached, over open clients. */
static uint64_t lost_now(void) {
    uint64_t lost = gaps;
    for (int i = 0; i < opt.clients; i++) {
        if (conns[i].state != ST_OPEN)
            continue;
        for (int s = 0; s < opt.senders; s++)
            if (sent[s] > conns[i].last[s])
                lost += sent[s] - conns[i].last[s];
    }
    return lost;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double q_ms(double p) {
    if (lat_n == 0)
        return 0.0;
    size_t i = (size_t)(p * (double)lat_n);
    if (i >= lat_n)
        i = lat_n - 1;
    return (double)lat[i] / 1e6;
}

static int parse_rates(const char *text) {
    char *copy = strdup(text), *save = NULL;
    opt.nrates = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        char *end;
        double r = strtod(t, &end);
        if (*end != '\0' || r <= 0 || opt.nrates == MAX_RATES) {
            free(copy);
            return -1;
        }
        opt.rates[opt.nrates++] = r;
    }
    free(copy);
    return opt.nrates > 0 ? 0 : -1;
}

static void usage(void) {
    fprintf(stderr, "usage: steady_probe [--clients N] [--senders N] [--size N] [--rates R,..] "
                    "[--warmup S] [--window S] [--path P] [--setup-timeout S] [--drain S] "
                    "HOST PORT\n");
    exit(2);
}

static uint64_t sec_ns(double s) { return (uint64_t)(s * 1e9); }

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"clients", required_argument, 0, 'c'},       {"senders", required_argument, 0, 's'},
        {"size", required_argument, 0, 'z'},          {"rates", required_argument, 0, 'r'},
        {"warmup", required_argument, 0, 'w'},        {"window", required_argument, 0, 'W'},
        {"path", required_argument, 0, 'p'},          {"setup-timeout", required_argument, 0, 't'},
        {"drain", required_argument, 0, 'd'},         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': opt.clients = atoi(optarg); break;
        case 's': opt.senders = atoi(optarg); break;
        case 'z': opt.size = atoi(optarg); break;
        case 'r': if (parse_rates(optarg) < 0) usage(); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'W': opt.window = atof(optarg); break;
        case 'p': opt.path = optarg; break;
        case 't': opt.setup_timeout = atof(optarg); break;
        case 'd': opt.drain = atof(optarg); break;
        default: usage();
        }
    }
    if (argc - optind != 2)
        usage();
    opt.host = argv[optind];
    opt.port = atoi(argv[optind + 1]);
    if (opt.clients < 1 || opt.senders < 1 || opt.senders > opt.clients || opt.senders > 9999 ||
        opt.size < TAIL + 4 || opt.size > 65000 || opt.port < 1 || opt.port > 65535 ||
        opt.warmup < 0 || opt.window <= 0 || opt.drain < 0 || opt.setup_timeout <= 0)
        usage();
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(opt.host, NULL, &hints, &ai) != 0) {
        fprintf(stderr, "steady_probe: cannot resolve %s\n", opt.host);
        return 1;
    }
    target = *(struct sockaddr_in *)ai->ai_addr;
    target.sin_port = htons((uint16_t)opt.port);
    freeaddrinfo(ai);
    if (getrandom(&rng, sizeof rng, 0) != (ssize_t)sizeof rng || rng == 0)
        rng = now_ns() | 1;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.clients + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)opt.clients + 64 ? rl.rlim_max : (rlim_t)opt.clients + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    size_t n_head = (size_t)opt.size - TAIL;
    head = malloc(n_head + 1);
    static const char filler[] = "hubbub bench payload ";
    for (size_t i = 0; i < n_head; i++)
        head[i] = (unsigned char)filler[i % (sizeof filler - 1)];
    sent = calloc((size_t)opt.senders, sizeof *sent);
    conns = calloc((size_t)opt.clients, sizeof *conns);
    uint32_t *lasts = calloc((size_t)opt.clients * (size_t)opt.senders, sizeof *lasts);
    uint64_t *seens = calloc((size_t)opt.clients * (size_t)opt.senders, sizeof *seens);
    double max_rate = 0;
    for (int i = 0; i < opt.nrates; i++)
        max_rate = opt.rates[i] > max_rate ? opt.rates[i] : max_rate;
    lat_cap = (size_t)(max_rate * opt.window * opt.clients * 1.2) + 1024;
    lat = malloc(lat_cap * sizeof *lat);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!head || !sent || !conns || !lasts || !seens || !lat || epfd < 0) {
        fprintf(stderr, "steady_probe: out of memory\n");
        return 1;
    }
    for (int i = 0; i < opt.clients; i++) {
        struct conn *c = &conns[i];
        c->fd = -1;
        c->sid = i < opt.senders ? i : -1;
        c->rbuf = malloc(RBUF);
        c->wbuf = malloc(WBUF);
        c->last = lasts + (size_t)i * opt.senders;
        c->seen = seens + (size_t)i * opt.senders;
        if (!c->rbuf || !c->wbuf) {
            fprintf(stderr, "steady_probe: out of memory\n");
            return 1;
        }
    }

    uint64_t t0 = now_ns();
    pump(t0 + sec_ns(opt.setup_timeout), 0, setup_done);
    for (int i = 0; i < opt.clients; i++)
        if (conns[i].state != ST_OPEN)
            kill_conn(&conns[i], 0);
    int clients_open = open_clients();
    printf("{\"setup\":{\"clients\":%d,\"greeted\":%" PRIu64 ",\"failed\":%d,\"seconds\":%.3f}}\n",
           opt.clients, greeted, opt.clients - clients_open, (double)(now_ns() - t0) / 1e9);
    fflush(stdout);
    int senders_open = 1;
    for (int s = 0; s < opt.senders; s++)
        senders_open &= conns[s].state == ST_OPEN;
    if (clients_open < opt.clients || !senders_open) {
        fprintf(stderr, "steady_probe: %d of %d clients connected and greeted within %.1f s\n",
                clients_open, opt.clients, opt.setup_timeout);
        for (int i = 0; i < opt.clients; i++)
            kill_conn(&conns[i], 0);
        return 1;
    }

    for (int r = 0; r < opt.nrates; r++) {
        double rate = opt.rates[r];
        interval_ns = (uint64_t)(1e9 * opt.senders / rate);
        uint64_t start = now_ns();
        for (int s = 0; s < opt.senders; s++)
            conns[s].next_send = start + interval_ns * (uint64_t)s / (uint64_t)opt.senders;
        uint64_t err0 = errors, dup0 = duplicated, reo0 = reordered, lost0 = lost_now();
        int open0 = open_clients();
        pump(start + sec_ns(opt.warmup), 1, NULL);

        lat_n = lat_overflow = 0;
        sent_in_window = received_in_window = 0;
        win_start = now_ns();
        win_end = UINT64_MAX;
        measuring = 1;
        printf("{\"window\":\"start\",\"rate\":%g}\n", rate);
        fflush(stdout);
        double sys0, user0 = cpu_s(&sys0);
        pump(win_start + sec_ns(opt.window), 1, NULL);
        win_end = now_ns();
        double sys1, user1 = cpu_s(&sys1);
        printf("{\"window\":\"end\",\"rate\":%g}\n", rate);
        fflush(stdout);

        expected_total = total_sent() * (uint64_t)open_clients();
        pump(now_ns() + sec_ns(opt.drain), 0, drained);
        measuring = 0;
        double span = (double)(win_end - win_start) / 1e9, sys = sys1 - sys0;
        double cpu = user1 - user0 + sys;
        qsort(lat, lat_n, sizeof *lat, cmp_i64);
        uint64_t deliveries = lat_n + lat_overflow;
        uint64_t lost = lost_now() - lost0;
        uint64_t err = errors - err0; /* a connection lost counts as one */
        int ok = lost == 0 && duplicated == dup0 && reordered == reo0 && err == 0 &&
                 lat_overflow == 0 && deliveries == sent_in_window * (uint64_t)open0;
        printf("{\"rate\":%g,\"ok\":%s,\"clients\":%d,\"senders\":%d,\"size\":%d,"
               "\"window_s\":%.3f,\"sent\":%" PRIu64 ",\"expected\":%" PRIu64
               ",\"deliveries\":%" PRIu64 ",\"received_in_window\":%" PRIu64
               ",\"deliveries_per_s\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
               "\"p99_9_ms\":%.3f,\"max_ms\":%.3f,\"latency_overflow\":%zu,\"lost\":%" PRIu64
               ",\"duplicated\":%" PRIu64 ",\"reordered\":%" PRIu64 ",\"errors\":%" PRIu64
               ",\"probe_cpu_s\":%.4f,\"probe_sys_s\":%.4f,\"probe_cpu_pct\":%.1f,\"probe_cpu_us_per_delivery\":%.3f}\n",
               rate, ok ? "true" : "false", open0, opt.senders, opt.size, span, sent_in_window,
               sent_in_window * (uint64_t)open0, deliveries, received_in_window,
               (double)received_in_window / span, q_ms(0.5), q_ms(0.9), q_ms(0.99), q_ms(0.999),
               lat_n ? (double)lat[lat_n - 1] / 1e6 : 0.0, lat_overflow, lost,
               duplicated - dup0, reordered - reo0, err, cpu, sys, 100.0 * cpu / span,
               received_in_window ? cpu * 1e6 / (double)received_in_window : 0.0);
        fflush(stdout);
    }

    uint64_t sent_all = total_sent(), lost_all = lost_now();
    int still_open = open_clients();
    unsigned char bye[2] = {0x03, 0xe8}; /* 1000: normal closure */
    for (int i = 0; i < opt.clients; i++) {
        struct conn *c = &conns[i];
        if (c->state == ST_OPEN)
            send_frame(c, 0x8, bye, 2);
        if (c->state != ST_DEAD) {
            close(c->fd);
            c->fd = -1;
            c->state = ST_DEAD;
        }
    }
    printf("{\"done\":true,\"clients_open\":%d,\"sent\":%" PRIu64 ",\"deliveries\":%" PRIu64
           ",\"expected\":%" PRIu64 ",\"echoes\":%" PRIu64 ",\"lost\":%" PRIu64
           ",\"duplicated\":%" PRIu64 ",\"reordered\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"pings\":%" PRIu64 ",\"other_frames\":%" PRIu64 "}\n",
           still_open, sent_all, delivered_total, sent_all * (uint64_t)opt.clients, echoes,
           lost_all, duplicated, reordered, errors, pings, others);
    fflush(stdout);
    return 0;
}
