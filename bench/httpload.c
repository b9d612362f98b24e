/*
 * The HTTP benchmark's load generator: keep-alive HTTP/1.1 GETs over mutual
 * TLS, one thread, epoll, non-blocking OpenSSL.
 *
 *     cc -O2 -o httpload bench/httpload.c -lssl -lcrypto
 *     ./httpload --port P --ca ca.crt --cert client.crt --key client.key \
 *                [--connections C] [--seconds S] [--warmup W]
 *
 * It opens C connections to 127.0.0.1:P (TLS 1.3, verifying the server's
 * certificate against --ca and its name "localhost", presenting the client
 * certificate), each with its full handshake and a first request done before
 * anything is measured.  Then each connection sends `GET / HTTP/1.1` with
 * `Host: localhost`, reads the whole answer (its head, then Content-Length
 * bytes of body) and sends the next: one request outstanding per connection,
 * for W seconds of warm-up (not counted), then S measured seconds.
 *
 * On stdout: "start" when the measured interval begins and "end" when it
 * ends (so that the caller can read the server's CPU time at both), then one
 * JSON object: the requests answered 200 in the interval, requests/s,
 * p50/p99/mean of each one's time from its write to its answer's last byte
 * (µs), the errors by kind (an answer that is not a 200 is one; a connection
 * that fails is closed and not replaced) and this process's own CPU seconds
 * over the interval.  Exit status 1 if no connection could be set up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ (64 * 1024)
#define MAXKINDS 16

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
#define REQLEN (sizeof REQUEST - 1)

struct conn {
    int fd;
    SSL *ssl;
    int alive;
    int reading;    /* its request is written; its answer is being read */
    size_t sent;    /* bytes of REQUEST written so far */
    char buf[BUFSZ];
    size_t len;     /* bytes of the answer in buf */
    long need;      /* -1: head incomplete; else head + body bytes */
    int status;
    double started; /* when the request's first byte was written */
};

/* --- counters --------------------------------------------------------------- */

static struct {
    char kind[MAXKINDS][112];
    long count[MAXKINDS];
    int n;
} errors;

static void error(const char *kind)
{
    for (int i = 0; i < errors.n; i++)
        if (strcmp(errors.kind[i], kind) == 0) {
            errors.count[i]++;
            return;
        }
    if (errors.n == MAXKINDS)
        kind = "other";
    if (errors.n < MAXKINDS) {
        snprintf(errors.kind[errors.n], sizeof errors.kind[0], "%s", kind);
        errors.count[errors.n++] = 1;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpuNow(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double *latencies;
static size_t nlat, caplat;
static int measuring;

static void answered(double seconds)
{
    if (!measuring)
        return;
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        latencies = realloc(latencies, caplat * sizeof *latencies);
        if (latencies == NULL) {
            fprintf(stderr, "httpload: out of memory\n");
            exit(1);
        }
    }
    latencies[nlat++] = seconds;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --- one connection ---------------------------------------------------------- */

/* Close a failed connection, counting why (with OpenSSL's reason if any). */
static void fail(struct conn *c, const char *why)
{
    char kind[112];
    unsigned long e = ERR_peek_last_error();
    if (e) {
        char text[80];
        ERR_error_string_n(e, text, sizeof text);
        snprintf(kind, sizeof kind, "%s: %s", why, text);
        why = kind;
    }
    ERR_clear_error();
    error(why); /* in the warm-up too: a connection lost there is one fewer */
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    c->alive = 0;
    close(c->fd);
}

/*
 * Parse the answer in c->buf: 0 when it needs more bytes, 1 when it is
 * complete (its status in c->status), -1 on an error (counted).
 */
static int parse(struct conn *c)
{
    if (c->need < 0) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL) {
            if (c->len == BUFSZ) {
                error("answer head too large");
                return -1;
            }
            return 0;
        }
        size_t headLen = (size_t)(end - c->buf) + 4;
        if (headLen < 16 || memcmp(c->buf, "HTTP/1.", 7) != 0 || c->buf[8] != ' ') {
            error("not an HTTP/1.x answer");
            return -1;
        }
        c->status = atoi(c->buf + 9);
        long length = -1;
        for (char *line = memchr(c->buf, '\n', headLen); line != NULL && line < end;
             line = memchr(line, '\n', (size_t)(end - line))) {
            line++;
            if (strncasecmp(line, "content-length:", 15) == 0) {
                length = strtol(line + 15, NULL, 10);
                break;
            }
        }
        if (length < 0 || headLen + (size_t)length > BUFSZ) {
            error("answer without a usable Content-Length");
            return -1;
        }
        c->need = (long)(headLen + (size_t)length);
    }
    if ((long)c->len < c->need)
        return 0;
    if ((long)c->len > c->need) {
        error("bytes after the answer");
        return -1;
    }
    c->len = 0;
    c->need = -1;
    return 1;
}

/* Write (the rest of) the request: 0 (done or would block) or -1 (failed). */
static int writeRequest(struct conn *c)
{
    if (c->sent == 0)
        c->started = now();
    while (c->sent < REQLEN) {
        int w = SSL_write(c->ssl, REQUEST + c->sent, (int)(REQLEN - c->sent));
        if (w <= 0) {
            int e = SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                return 0;
            fail(c, "write failed");
            return -1;
        }
        c->sent += (size_t)w;
    }
    c->sent = 0;
    c->reading = 1;
    return 0;
}

/*
 * Go as far as the socket allows: read the answer, and once it is complete
 * (if C{more}) write the next request.  Edge-triggered, so it returns only at
 * "would block" (or when it must stop).
 */
static void drive(struct conn *c, int more)
{
    while (c->alive) {
        if (!c->reading) {
            if (!more)
                return;
            if (writeRequest(c) < 0 || !c->reading)
                return;
        }
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(BUFSZ - c->len));
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            fail(c, e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL
                        ? "closed by the server"
                        : "read failed");
            return;
        }
        c->len += (size_t)r;
        int p = parse(c);
        if (p < 0) {
            fail(c, "bad answer");
            return;
        }
        if (p == 1) {
            c->reading = 0;
            if (c->status == 200) {
                answered(now() - c->started);
            } else {
                char kind[32];
                snprintf(kind, sizeof kind, "status %d", c->status);
                if (measuring)
                    error(kind);
            }
        }
    }
}

/*
 * Connect, handshake and make a first request, blocking (with a 10 s
 * timeout); then switch the socket to non-blocking.  Under TLS 1.3 the server
 * checks the client's certificate after the client's side of the handshake
 * is done: the first answer proves the connection was accepted (and reads
 * the session tickets out of the way).
 */
static int setUp(struct conn *c, SSL_CTX *ctx, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 10};
    int one = 1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    c->need = -1;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        error("connect failed");
        close(c->fd);
        return -1;
    }
    c->ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) {
        fail(c, "handshake failed");
        return -1;
    }
    c->alive = 1;
    if (SSL_write(c->ssl, REQUEST, (int)REQLEN) != (int)REQLEN) {
        fail(c, "first request failed");
        return -1;
    }
    int p = 0;
    while (p == 0) {
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(BUFSZ - c->len));
        if (r <= 0) {
            fail(c, "first request failed (refused?)");
            return -1;
        }
        c->len += (size_t)r;
        p = parse(c);
    }
    if (p < 0 || c->status != 200) {
        fail(c, "first request not answered 200");
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

/* --- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *ca = NULL, *cert = NULL, *key = NULL;
    int port = 0, nconn = 1;
    double seconds = 5, warmup = 1;

    for (int i = 1; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--port"))
            port = atoi(v);
        else if (!strcmp(o, "--ca"))
            ca = v;
        else if (!strcmp(o, "--cert"))
            cert = v;
        else if (!strcmp(o, "--key"))
            key = v;
        else if (!strcmp(o, "--connections"))
            nconn = atoi(v);
        else if (!strcmp(o, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(o, "--warmup"))
            warmup = atof(v);
        else {
            fprintf(stderr, "httpload: unknown option %s\n", o);
            return 2;
        }
    }
    if (!port || !ca || !cert || !key || nconn < 1 || nconn > 10000 || seconds <= 0 ||
        seconds > 3600 || warmup < 0) {
        fprintf(stderr, "usage: httpload --port P --ca CA --cert CRT --key KEY"
                        " [--connections C] [--seconds S] [--warmup W]\n");
        return 2;
    }

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }

    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(0);
    int ready = 0;
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        if (setUp(c, ctx, port) != 0)
            continue;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        ready++;
    }
    if (ready == 0) {
        fprintf(stderr, "httpload: no connection set up:");
        for (int i = 0; i < errors.n; i++)
            fprintf(stderr, " %s (%ld)", errors.kind[i], errors.count[i]);
        fprintf(stderr, "\n");
        return 1;
    }

    double begin = now(), start = begin + warmup, stop = start + seconds;
    double cpuStart = 0, startedAt = 0, endedAt = 0;
    for (int i = 0; i < nconn; i++)
        if (conns[i].alive)
            drive(&conns[i], 1);
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!measuring && t >= start && endedAt == 0) {
            measuring = 1;
            startedAt = t;
            cpuStart = cpuNow();
            printf("start\n");
            fflush(stdout);
        }
        if (measuring && t >= stop) {
            measuring = 0;
            endedAt = t;
            break;
        }
        int n = epoll_wait(ep, events, 256, 5);
        if (n < 0 && errno != EINTR) {
            perror("httpload: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++)
            drive(events[i].data.ptr, 1);
        int alive = 0;
        for (int i = 0; i < nconn && !alive; i++)
            alive = conns[i].alive;
        if (!alive) {
            if (!measuring) {
                startedAt = now();
                cpuStart = cpuNow();
                printf("start\n");
            }
            measuring = 0;
            endedAt = now();
            break;
        }
    }
    double cpu = cpuNow() - cpuStart;
    printf("end\n");
    fflush(stdout);

    int alive = 0;
    for (int i = 0; i < nconn; i++)
        alive += conns[i].alive;
    double wall = endedAt - startedAt;
    double p50 = 0, p99 = 0, mean = 0;
    if (nlat > 0) {
        qsort(latencies, nlat, sizeof *latencies, compare);
        p50 = latencies[nlat / 2];
        p99 = latencies[(size_t)((double)nlat * 0.99) < nlat ? (size_t)((double)nlat * 0.99)
                                                             : nlat - 1];
        for (size_t i = 0; i < nlat; i++)
            mean += latencies[i];
        mean /= (double)nlat;
    }
    printf("{\"connections\": %d, \"set_up\": %d, \"alive_at_end\": %d, \"requests\": %zu, "
           "\"wall\": %.6f, \"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
           "\"mean_us\": %.1f, \"client_cpu\": %.4f, \"errors\": {",
           nconn, ready, alive, nlat, wall, wall > 0 ? (double)nlat / wall : 0.0, p50 * 1e6,
           p99 * 1e6, mean * 1e6, cpu);
    for (int i = 0; i < errors.n; i++) {
        printf("%s\"", i ? ", " : "");
        for (const char *k = errors.kind[i]; *k; k++)
            if (*k != '"' && *k != '\\' && (unsigned char)*k >= 0x20)
                putchar(*k);
        printf("\": %ld", errors.count[i]);
    }
    printf("}}\n");
    return 0;
}
