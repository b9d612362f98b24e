/*
 * The benchmark's backend: a plaintext TCP echo server on 127.0.0.1, one
 * thread, epoll, non-blocking sockets.  It prints the port it listens on
 * (argv[1], 0: any free port) and serves until killed.  Each connection
 * echoes what it reads; when its write side is full it stops reading until
 * it drains, and it closes on EOF once everything read has been echoed.
 *
 *     cc -O2 -o echo bench/echo.c && ./echo 0
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

#define BUFSZ (256 * 1024)

struct conn {
    int fd;
    char *buf;
    size_t off, len; /* unsent bytes: buf[off..len) */
};

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static void watch(int ep, struct conn *c, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is pending; 1: all sent, 0: would block, -1: error. */
static int flush(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        c->off += (size_t)w;
    }
    c->off = c->len = 0;
    return 1;
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
        perror("echo: bind/listen");
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
            perror("echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (c->len > 0) { /* waiting for room to write */
                int r = flush(c);
                if (r < 0)
                    drop(ep, c);
                else if (r > 0)
                    watch(ep, c, EPOLLIN);
                continue;
            }
            if (c->buf == NULL && (c->buf = malloc(BUFSZ)) == NULL) {
                drop(ep, c);
                continue;
            }
            ssize_t r = read(c->fd, c->buf, BUFSZ);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                drop(ep, c); /* EOF (everything read was echoed) or error */
                continue;
            }
            if (r < 0)
                continue;
            c->len = (size_t)r;
            int f = flush(c);
            if (f < 0)
                drop(ep, c);
            else if (f == 0)
                watch(ep, c, EPOLLOUT);
        }
    }
}
