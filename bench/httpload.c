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
 * certificate), each with its full handshake done before anything is
 * measured.  Then each connection sends `GET / HTTP/1.1` with `Host:
 * localhost`, reads the whole answer (its head, then Content-Length bytes of
 * body), and sends the next: one request outstanding per connection, for W
 * seconds of warm-up (not counted) and then S measured seconds.
 *
 * On stdout: "start" when the measured interval begins, "end" when it ends
 * (so that the caller can read the server's CPU time at both), then one JSON
 * object: requests completed in the interval, requests/s, p50/p99/mean of
 * each request's time from its write to its answer's last byte (µs), the
 * errors by kind (an answer that is not a 200 is one; a connection that fails
 * is closed and not replaced), and this process's own CPU time over the
 * interval.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
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

struct conn {
    int fd;
    SSL *ssl;
    int alive;
    int reading; /* the request is sent, its answer is being read */
    size_t sent; /* bytes of REQUEST written */
    char buf[BUFSZ];
    size_t len;     /* bytes in buf */
    long need;      /* -1: head not complete; else total bytes of head + body */
    double started; /* when the request was written */
};

static struct {
    char kind[MAXKINDS][96];
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
    if (errors.n < MAXKINDS) {
        snprintf(errors.kind[errors.n], sizeof errors.kind[0], "%s", kind);
        errors.count[errors.n++] = 1;
    } else {
        errors.count[MAXKINDS - 1]++;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpuNow(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double *latencies;
static size_t nlat, caplat;
static int measuring;
static long completed;

static void recordLatency(double seconds)
{
    if (!measuring)
        return;
    completed++;
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

static void kill_(struct conn *c, const char *why)
{
    char kind[96];
    unsigned long e = ERR_peek_last_error();
    if (e && strcmp(why, "tls error") == 0) {
        char text[80];
        ERR_error_string_n(e, text, sizeof text);
        snprintf(kind, sizeof kind, "tls error: %s", text);
        why = kind;
    }
    ERR_clear_error();
    error(why);
    c->alive = 0;
    close(c->fd);
}

/*
 * Parse the answer in c->buf once its head is complete: 0 when it needs more
 * bytes, 1 when it is complete (and a 200), -1 on an error (counted).
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
        if (c->len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) {
            error("not an HTTP/1.x answer");
            return -1;
        }
        long length = -1;
        for (char *line = memchr(c->buf, '\n', headLen); line && line < end;
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
        c->need = (long)headLen + length;
        if (memcmp(c->buf + 8, " 200", 4) != 0) {
            char kind[32];
            snprintf(kind, sizeof kind, "status %.3s", c->buf + 9);
            error(kind);
            c->need = -2; /* counted; read the rest anyway */
            c->need = (long)headLen + length;
            if ((long)c->len >= c->need) {
                c->len -= (size_t)c->need; /* keep-alive goes on */
                memmove(c->buf, c->buf + c->need, c->len);
                c->need = -1;
                return 2;
            }
            return 0;
        }
    }
    if ((long)c->len < c->need)
        return 0;
    if ((long)c->len > c->need) {
        error("bytes after the answer (one request outstanding)");
        return -1;
    }
    c->len = 0;
    c->need = -1;
    return 1;
}

/* Write (the rest of) the request; -1 on an error. */
static int sendRequest(struct conn *c)
{
    if (!c->reading && c->sent == 0)
        c->started = now();
    while (c->sent < sizeof REQUEST - 1) {
        int w = SSL_write(c->ssl, REQUEST + c->sent, (int)(sizeof REQUEST - 1 - c->sent));
        if (w <= 0) {
            int e = SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                return 0;
            kill_(c, "tls error");
            return -1;
        }
        c->sent += (size_t)w;
    }
    c->reading = 1;
    c->sent = 0;
    return 0;
}

/* Read what is there; on a complete answer, send the next request. */
static void readAnswers(struct conn *c, int sendMore)
{
    for (;;) {
        if (!c->reading) {
            if (!sendMore)
                return;
            if (sendRequest(c) < 0 || !c->reading)
                return;
        }
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(BUFSZ - c->len));
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            kill_(c, e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? "closed by the server"
                                                                           : "tls error");
            return;
        }
        c->len += (size_t)r;
        int p;
        while ((p = parse(c)) == 2)
            ; /* a non-200 answer, counted */
        if (p < 0) {
            kill_(c, "protocol");
            return;
        }
        if (p == 1 || (p == 0 && c->need < 0 && c->len == 0)) {
            c->reading = 0;
            if (p == 1)
                recordLatency(now() - c->started);
        }
    }
}

static int handshake(struct conn *c, SSL_CTX *ctx, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 10};
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
        kill_(c, "tls error");
        return -1;
    }
    /*
     * Under TLS 1.3 the server checks the client's certificate after the
     * client's handshake is done: one request proves it was accepted (and
     * reads the session tickets out of the way).
     */
    c->alive = 1;
    c->need = -1;
    if (SSL_write(c->ssl, REQUEST, sizeof REQUEST - 1) != (int)(sizeof REQUEST - 1)) {
        kill_(c, "tls error");
        return -1;
    }
    c->reading = 1;
    while (c->alive && c->reading) {
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(BUFSZ - c->len));
        if (r <= 0) {
            kill_(c, "first request failed (refused?)");
            return -1;
        }
        c->len += (size_t)r;
        int p = parse(c);
        if (p < 0 || p == 2) {
            kill_(c, "first request failed");
            return -1;
        }
        if (p == 1)
            c->reading = 0;
    }
    int flags = SOCK_NONBLOCK;
    (void)flags;
    struct timeval zero = {0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
    return 0;
}

int main(int argc, char **argv)
{
    const char *ca = NULL, *cert = NULL, *key = NULL;
    int port = 0, nconn = 1;
    double seconds = 5, warmup = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ca"))
            ca = argv[i + 1];
        else if (!strcmp(argv[i], "--cert"))
            cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key"))
            key = argv[i + 1];
        else if (!strcmp(argv[i], "--connections"))
            nconn = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup"))
            warmup = atof(argv[i + 1]);
        else {
            fprintf(stderr, "httpload: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!port || !ca || !cert || !key || nconn < 1 || nconn > 10000 || seconds <= 0) {
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
    int alive = 0;
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        if (handshake(c, ctx, port) != 0)
            continue;
        int fl = 1;
        ioctl_nonblock:
        if (fcntl_nonblock(c->fd, fl) != 0) {
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        alive++;
    }
    return 0;
}
