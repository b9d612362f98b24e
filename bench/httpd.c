/*
 * The HTTP benchmark's backend: a plaintext HTTP/1.1 server on 127.0.0.1,
 * one thread, epoll, non-blocking sockets, in the style of echo.c.  It prints
 * the port it listens on (argv[1], 0: any free port) and serves until killed.
 *
 * Every request head (up to the blank line; requests have no body: the
 * benchmark sends GETs) gets the same small answer, and the connection stays
 * open:
 *
 *     HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok
 *
 * except `GET /headers`, whose answer's body is that request's head as it
 * arrived (so the benchmark can see what a proxy added, e.g. Client-Cert).
 * Heads split across reads and several heads in one read (pipelining) are
 * both handled; a head over BUFSZ bytes is answered 431 and the connection
 * closed.  When its write side is full, a connection stops reading until it
 * drains; it closes on EOF.
 *
 *     cc -O2 -o httpd bench/httpd.c && ./httpd 0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ (64 * 1024)

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
static const char TOO_BIG[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n";

struct conn {
    int fd;
    char in[BUFSZ];
    size_t inlen;   /* bytes of in[] not yet answered */
    size_t scanned; /* in[0..scanned) has no complete head terminator */
    char *out;
    size_t outoff, outlen, outcap; /* unsent: out[outoff..outlen) */
    int closing;                   /* close once out is sent */
};

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static void watch(int ep, struct conn *c, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int append(struct conn *c, const char *data, size_t n)
{
    if (c->outlen + n > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 4096;
        while (cap < c->outlen + n)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (p == NULL)
            return -1;
        c->out = p;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, data, n);
    c->outlen += n;
    return 0;
}

/* Write what is pending; 1: all sent, 0: would block, -1: error. */
static int flush(struct conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        c->outoff += (size_t)w;
    }
    c->outoff = c->outlen = 0;
    return 1;
}

/* Answer every complete head in c->in; keep the incomplete rest. */
static int answer(struct conn *c)
{
    size_t start = 0;
    for (;;) {
        size_t from = c->scanned > start + 3 ? c->scanned - 3 : start;
        char *end = memmem(c->in + from, c->inlen - from, "\r\n\r\n", 4);
        if (end == NULL)
            break;
        size_t headLen = (size_t)(end - (c->in + start)) + 4;
        const char *head = c->in + start;
        if (headLen > 13 && memcmp(head, "GET /headers ", 13) == 0) {
            char top[64];
            int n = snprintf(top, sizeof top, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                             headLen);
            if (append(c, top, (size_t)n) || append(c, head, headLen))
                return -1;
        } else if (append(c, OK, sizeof OK - 1)) {
            return -1;
        }
        start += headLen;
        c->scanned = start;
    }
    memmove(c->in, c->in + start, c->inlen - start);
    c->inlen -= start;
    c->scanned = c->inlen;
    if (c->inlen == BUFSZ) { /* a head that does not fit */
        if (append(c, TOO_BIG, sizeof TOO_BIG - 1))
            return -1;
        c->closing = 1;
        c->inlen = c->scanned = 0;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    socklen_t salen = sizeof sa;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096)) {
        perror("httpd: bind/listen");
        return 1;
    }
    getsockname(ls, (struct sockaddr *)&sa, &salen);
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);

    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) {
            perror("httpd: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    if (c == NULL) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (c->outlen > 0) { /* waiting for room to write */
                int r = flush(c);
                if (r < 0 || (r > 0 && c->closing))
                    drop(ep, c);
                else if (r > 0)
                    watch(ep, c, EPOLLIN);
                continue;
            }
            ssize_t r = read(c->fd, c->in + c->inlen, BUFSZ - c->inlen);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                drop(ep, c); /* EOF or error */
                continue;
            }
            if (r < 0)
                continue;
            c->inlen += (size_t)r;
            if (answer(c) < 0) {
                drop(ep, c);
                continue;
            }
            int f = flush(c);
            if (f < 0 || (f > 0 && c->closing))
                drop(ep, c);
            else if (f == 0)
                watch(ep, c, EPOLLOUT);
        }
    }
}
