/* stream: see stream.h. */
#include "proxy/stream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

/* Reading stops after this much per wake-up so that one busy socket cannot starve the
 * others; the rest is read in the next loop iteration. */
#define READ_BUDGET (256 * 1024)
/* Reads into a buffer that already holds data go straight into its free space. */
#define READ_BULK (64 * 1024)
/* TLS: one record's worth of plaintext per SSL_read. */
#define TLS_READ 16384
/* TLS: small leading pieces are joined up to this much so that one record carries them. */
#define TLS_COALESCE 16384

/* Each thread's batch: its depth, and the readings taken in it (0: none yet). */
static __thread struct {
    unsigned depth;
    uint64_t mono_us;
    double wall;
} batch;

void stream_batch_begin(void)
{
    batch.depth++;
}

void stream_clock_forget(void)
{
    batch.mono_us = 0;
    batch.wall = 0;
}

void stream_batch_end(void)
{
    if (batch.depth > 0 && --batch.depth == 0)
        stream_clock_forget();
}

uint64_t stream_now_us(void)
{
    struct timespec ts;
    uint64_t us;
    if (batch.mono_us)
        return batch.mono_us;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    if (batch.depth)
        batch.mono_us = us;
    return us;
}

uint64_t stream_now_ms(void)
{
    return stream_now_us() / 1000u;
}

double stream_wall_now(void)
{
    struct timespec ts;
    double t;
    if (batch.wall != 0)
        return batch.wall;
    clock_gettime(CLOCK_REALTIME, &ts);
    t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    if (batch.depth)
        batch.wall = t;
    return t;
}

void stream_ctx_init(struct stream_ctx *ctx, struct event_base *base)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->base = base;
}

void stream_ctx_deinit(struct stream_ctx *ctx)
{
    while (ctx->nspare)
        evbuffer_free(ctx->spare[--ctx->nspare]);
}

static struct evbuffer *buf_get(struct stream_ctx *ctx)
{
    if (ctx->nspare)
        return ctx->spare[--ctx->nspare];
    return evbuffer_new();
}

static void buf_put(struct stream_ctx *ctx, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    if (n)
        evbuffer_drain(b, n);
    if (ctx->nspare < STREAM_SPARE_BUFFERS)
        ctx->spare[ctx->nspare++] = b;
    else
        evbuffer_free(b);
}

struct evbuffer *stream_input(struct stream *s)
{
    if (s->in == NULL)
        s->in = buf_get(s->ctx);
    return s->in;
}

struct evbuffer *stream_output(struct stream *s)
{
    if (s->out == NULL)
        s->out = buf_get(s->ctx);
    return s->out;
}

size_t stream_input_length(const struct stream *s)
{
    return s->in ? evbuffer_get_length(s->in) : 0;
}

size_t stream_output_length(const struct stream *s)
{
    return s->out ? evbuffer_get_length(s->out) : 0;
}

int stream_fd(const struct stream *s)
{
    return (int)event_get_fd(&s->io);
}

void stream_setcb(struct stream *s, stream_cb cb, void *arg)
{
    s->cb = cb;
    s->arg = arg;
}

void stream_set_watermarks(struct stream *s, uint32_t read_high, uint32_t write_low)
{
    s->read_high = read_high;
    s->write_low = write_low;
}

/* Sets the timer for the earliest deadline, unless it is already set for that or earlier (then
 * it fires early, finds nothing due and is set again: cheaper than moving it every time a
 * deadline moves later, which is what keep-alive traffic does). */
static void schedule(struct stream *s)
{
    uint64_t next = 0, now, d;
    if (s->reading && s->rd_deadline)
        next = s->rd_deadline;
    if (s->wr_deadline && (next == 0 || s->wr_deadline < next))
        next = s->wr_deadline;
    if (s->alarm && (next == 0 || s->alarm < next))
        next = s->alarm;
    if (next == 0 || (s->armed && s->armed <= next))
        return;
    now = stream_now_ms();
    d = next > now ? next - now : 0;
    struct timeval tv = {(time_t)(d / 1000), (suseconds_t)((d % 1000) * 1000)};
    if (event_add(&s->timer, &tv) == 0)
        s->armed = next;
}

void stream_set_timeouts(struct stream *s, uint32_t rto_ms, uint32_t wto_ms)
{
    uint64_t now = stream_now_ms();
    s->rto_ms = rto_ms;
    s->wto_ms = wto_ms;
    s->rd_deadline = rto_ms ? now + rto_ms : 0;
    s->wr_deadline = wto_ms && stream_output_length(s) ? now + wto_ms : 0;
    schedule(s);
}

void stream_set_alarm(struct stream *s, uint32_t ms)
{
    s->alarm = ms ? stream_now_ms() + ms : 0;
    schedule(s);
}

void stream_set_reading(struct stream *s, int on)
{
    if (on && !s->reading) {
        s->reading = 1;
        s->rd_deadline = s->rto_ms ? stream_now_ms() + s->rto_ms : 0;
        schedule(s);
        /* No new edge will come for input that is already waiting. */
        if (s->readable && !s->eof && !s->failed)
            event_active(&s->io, EV_READ, 1);
    } else if (!on) {
        s->reading = 0;
    }
}

/* SSL_get_error needs an empty error queue before each call it judges; the queue is nearly
 * always empty already, and emptying it unconditionally costs more than looking. */
static void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

static void fail(struct stream *s, int sys_errno)
{
    s->failed = 1;
    s->sys_errno = sys_errno;
    if (s->ssl && s->ssl_error == 0)
        s->ssl_error = ERR_peek_last_error();
    ERR_clear_error();
}

/* SSL_read/SSL_write/SSL_do_handshake returned r <= 0: 1 wait, 0 the peer's EOF, -1 failed. */
static int tls_result(struct stream *s, int r, int reading)
{
    int e = SSL_get_error(s->ssl, r);
    unsigned long le;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        s->readable = 0;
        if (!reading)
            s->write_wants_read = 1;
        return 1;
    case SSL_ERROR_WANT_WRITE:
        s->writable = 0;
        if (reading)
            s->read_wants_write = 1;
        return 1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0)
            return 0; /* EOF without close_notify (OpenSSL 1.1) */
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 1;
        /* A socket error (a reset): not a TLS protocol error. */
        ERR_clear_error();
        fail(s, errno ? errno : EIO);
        return -1;
    default:
        le = ERR_peek_last_error();
        if (ERR_GET_LIB(le) == ERR_LIB_SSL &&
            ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return 0; /* EOF without close_notify (OpenSSL 3): the owner judges the framing */
        }
        fail(s, 0);
        return -1;
    }
}

/* TLS: notes whether the socket's last read came back short (the kernel had nothing more), so
 * that the read loop can stop after the records it holds instead of asking again for an
 * EAGAIN; with read-ahead, one read usually brings a whole response. */
static long bio_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                   size_t *processed)
{
    struct stream *s = (struct stream *)BIO_get_callback_arg(b);
    (void)argp;
    (void)argi;
    (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN) && s)
        s->tls_short = ret > 0 && processed && *processed < len;
    return ret;
}

static int handshake(struct stream *s)
{
    int r;
    clear_errors();
    errno = 0;
    r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        s->handshaking = 0;
        /* With read-ahead, the read that brought the peer's Finished may also have brought
         * its first request, now held by OpenSSL: the socket is empty, so no edge will say
         * so, and the wake-up that ran the handshake may have been a write edge. */
        if (SSL_has_pending(s->ssl))
            s->readable = 1;
        return 1;
    }
    r = tls_result(s, r, 1);
    s->read_wants_write = 0;
    s->write_wants_read = 0;
    if (r == 0) {
        s->eof = 1;
        return -1;
    }
    return r > 0 ? 0 : -1;
}

/* Commits n bytes read into the reserved vectors v[0..nv). */
static void commit(struct evbuffer *in, struct evbuffer_iovec *v, int nv, size_t n)
{
    int i, used = 0;
    for (i = 0; i < nv && n > 0; i++) {
        if (v[i].iov_len > n)
            v[i].iov_len = n;
        n -= v[i].iov_len;
        used++;
    }
    evbuffer_commit_space(in, v, used);
}

static unsigned read_in(struct stream *s)
{
    struct evbuffer *in;
    size_t total = 0;
    unsigned ev = 0;
    if (!s->reading || s->eof || s->failed || s->handshaking)
        return 0;
    if (!s->readable && !(s->read_wants_write && s->writable))
        return 0;
    in = stream_input(s);
    if (in == NULL) {
        fail(s, ENOMEM);
        return 0;
    }
    for (;;) {
        size_t have = evbuffer_get_length(in);
        struct evbuffer_iovec v[2];
        int nv;
        if (s->read_high && have >= s->read_high)
            break; /* resumed by stream_settle once the owner has taken some */
        if (total >= READ_BUDGET) {
            event_active(&s->io, EV_READ, 1);
            break;
        }
        if (s->ssl) {
            char *dst;
            int r, small = have == 0;
            if (small) {
                dst = s->ctx->scratch;
            } else {
                nv = evbuffer_reserve_space(in, TLS_READ, v, 1);
                if (nv < 1) {
                    fail(s, ENOMEM);
                    break;
                }
                dst = v[0].iov_base;
            }
            clear_errors();
            errno = 0;
            r = SSL_read(s->ssl, dst,
                         small ? STREAM_SCRATCH
                               : (int)(v[0].iov_len > TLS_READ ? TLS_READ : v[0].iov_len));
            if (r > 0) {
                s->read_wants_write = 0;
                if (!small) {
                    commit(in, v, 1, (size_t)r);
                } else {
                    int added = evbuffer_add(in, dst, (size_t)r);
                    /* The scratch is shared by every connection of the worker and may have
                     * held a secret (a Proxy-Authorization line): not left behind. */
                    OPENSSL_cleanse(dst, (size_t)r);
                    if (added < 0) {
                        fail(s, ENOMEM);
                        break;
                    }
                }
                total += (size_t)r;
                if (s->tls_short && !SSL_has_pending(s->ssl) && !s->rdhup) {
                    s->readable = 0; /* drained: the next byte brings a new edge */
                    break;
                }
                continue;
            }
            r = tls_result(s, r, 1);
            if (r == 0) {
                s->eof = 1;
                ev |= STREAM_EOF;
            }
            break;
        } else {
            size_t got = 0;
            struct iovec iov[2];
            int i, small = have == 0;
            ssize_t n;
            if (small) {
                iov[0].iov_base = s->ctx->scratch;
                iov[0].iov_len = got = STREAM_SCRATCH;
                nv = 1;
            } else {
                nv = evbuffer_reserve_space(in, READ_BULK, v, 2);
                if (nv < 1) {
                    fail(s, ENOMEM);
                    break;
                }
                for (i = 0; i < nv; i++) {
                    iov[i].iov_base = v[i].iov_base;
                    iov[i].iov_len = v[i].iov_len;
                    got += v[i].iov_len;
                }
            }
            /* recv(2), not read(2)/readv(2): a socket call skips the file layer. */
            if (nv == 1)
                n = recv(event_get_fd(&s->io), iov[0].iov_base, iov[0].iov_len, 0);
            else
                n = recvmsg(event_get_fd(&s->io), &(struct msghdr){.msg_iov = iov,
                                                                  .msg_iovlen = (size_t)nv},
                            0);
            if (n > 0) {
                if (!small) {
                    commit(in, v, nv, (size_t)n);
                } else {
                    int added = evbuffer_add(in, s->ctx->scratch, (size_t)n);
                    OPENSSL_cleanse(s->ctx->scratch, (size_t)n); /* as above */
                    if (added < 0) {
                        fail(s, ENOMEM);
                        break;
                    }
                }
                total += (size_t)n;
                /* A short read emptied the socket's queue: the next byte brings a new edge.
                 * After the peer's FIN (EPOLLRDHUP) no edge would come, so read on to the 0. */
                if ((size_t)n < got && !s->rdhup) {
                    s->readable = 0;
                    break;
                }
                continue;
            }
            if (n == 0) {
                s->eof = 1;
                s->readable = 0;
                ev |= STREAM_EOF;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                s->readable = 0;
                break;
            }
            fail(s, errno);
            break;
        }
    }
    if (total) {
        ev |= STREAM_READ;
        if (s->rto_ms) {
            s->rd_deadline = stream_now_ms() + s->rto_ms;
            schedule(s);
        }
    }
    return ev;
}

/* Sends what out holds from its start, up to STREAM_SEND_IOV pieces at once: send(2) for one
 * piece, sendmsg(2) for more (socket calls: no file layer, and no SIGPIPE). Drains what went;
 * returns it, or -1 with errno. */
#define STREAM_SEND_IOV 16
static ssize_t send_some(struct evbuffer *out, int fd, int *full)
{
    struct evbuffer_iovec v[STREAM_SEND_IOV];
    struct iovec iov[STREAM_SEND_IOV];
    int nv = evbuffer_peek(out, -1, NULL, v, STREAM_SEND_IOV), i;
    size_t offered = 0;
    ssize_t n;
    *full = 0;
    if (nv <= 0) { /* nothing to peek while the length said otherwise: never loop on it */
        errno = EIO;
        return -1;
    }
    if (nv > STREAM_SEND_IOV)
        nv = STREAM_SEND_IOV;
    if (nv == 1) {
        offered = v[0].iov_len;
        n = send(fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL);
    } else {
        for (i = 0; i < nv; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
            offered += v[i].iov_len;
        }
        n = sendmsg(fd, &(struct msghdr){.msg_iov = iov, .msg_iovlen = (size_t)nv},
                    MSG_NOSIGNAL);
    }
    if (n > 0)
        evbuffer_drain(out, (size_t)n);
    /* Less than was offered: the socket's buffer is full, and EPOLLOUT will say when not.
     * All of it, with more in out (past the pieces offered): the caller sends on. */
    *full = n >= 0 && ((size_t)n < offered || n == 0);
    return n;
}

static unsigned write_out(struct stream *s)
{
    struct evbuffer *out = s->out;
    size_t len = out ? evbuffer_get_length(out) : 0, wrote = 0;
    if (len == 0 || s->failed)
        return 0;
    if (s->handshaking || !(s->writable || (s->write_wants_read && s->readable)))
        goto waiting;
    while (len > 0) {
        if (s->ssl == NULL) {
            int full;
            ssize_t n = send_some(out, event_get_fd(&s->io), &full);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    s->writable = 0;
                else
                    fail(s, errno);
                break;
            }
            wrote += (size_t)n;
            len -= (size_t)n;
            if (full) {
                s->writable = 0; /* a partial write: the socket is full, EPOLLOUT follows */
                break;
            }
        } else {
            struct evbuffer_iovec v;
            size_t n;
            const void *p;
            if (evbuffer_peek(out, -1, NULL, &v, 1) < 1)
                break;
            n = v.iov_len;
            p = v.iov_base;
            if (n < TLS_COALESCE && len > n) {
                /* Several small pieces (a head, then the start of a body): one record. */
                n = len < TLS_COALESCE ? len : TLS_COALESCE;
                p = evbuffer_pullup(out, (ev_ssize_t)n);
                if (p == NULL) {
                    fail(s, ENOMEM);
                    break;
                }
            }
            clear_errors();
            errno = 0;
            int r = SSL_write(s->ssl, p, (int)(n > INT32_MAX ? INT32_MAX : n));
            if (r > 0) {
                s->write_wants_read = 0;
                evbuffer_drain(out, (size_t)r);
                wrote += (size_t)r;
                len -= (size_t)r;
                continue;
            }
            if (tls_result(s, r, 0) == 0)
                fail(s, EPIPE); /* the peer closed: what is queued cannot be delivered */
            break;
        }
    }
    if (wrote) {
        s->wr_deadline = len && s->wto_ms ? stream_now_ms() + s->wto_ms : 0;
        if (s->wr_deadline)
            schedule(s);
        return len <= s->write_low && !s->failed ? STREAM_DRAINED : 0;
    }
waiting:
    if (len && s->wto_ms && s->wr_deadline == 0 && !s->failed) {
        s->wr_deadline = stream_now_ms() + s->wto_ms;
        schedule(s);
    }
    return 0;
}

static void io_run(struct stream *s, short what);

static void io_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    stream_batch_begin();
    io_run(arg, what);
    stream_batch_end();
}

static void io_run(struct stream *s, short what)
{
    unsigned ev = 0;
    if (what & EV_READ)
        s->readable = 1;
    if (what & EV_WRITE)
        s->writable = 1;
    if (what & EV_CLOSED) {
        s->rdhup = 1;
        s->readable = 1;
    }
    if (s->failed) {
        if (!s->fail_reported) {
            s->fail_reported = 1;
            s->cb(s, STREAM_ERROR, s->arg);
        }
        return;
    }
    if (s->handshaking) {
        int r = handshake(s);
        if (r == 0)
            return;
        if (r < 0) {
            if (s->failed) {
                s->fail_reported = 1;
                s->cb(s, STREAM_ERROR, s->arg);
            } else {
                s->cb(s, STREAM_EOF, s->arg);
            }
            return;
        }
        ev |= STREAM_CONNECTED;
    }
    ev |= write_out(s);
    ev |= read_in(s);
    if (s->failed) {
        s->fail_reported = 1;
        ev |= STREAM_ERROR;
    }
    if (ev)
        s->cb(s, ev, s->arg);
}

static void timer_run(struct stream *s);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    stream_batch_begin();
    timer_run(arg);
    stream_batch_end();
}

static void timer_run(struct stream *s)
{
    uint64_t now = stream_now_ms();
    unsigned ev = 0;
    s->armed = 0;
    if (s->reading && s->rd_deadline && s->rd_deadline <= now) {
        s->rd_deadline = 0;
        ev |= STREAM_RTIMEOUT;
    }
    if (s->wr_deadline && s->wr_deadline <= now) {
        s->wr_deadline = 0;
        if (stream_output_length(s))
            ev |= STREAM_WTIMEOUT;
    }
    if (s->alarm && s->alarm <= now) {
        s->alarm = 0;
        ev |= STREAM_ALARM;
    }
    schedule(s);
    if (ev)
        s->cb(s, ev, s->arg);
}

/* Binds ssl to fd for the stream's read loop (short-read notes) and starts the handshake. */
static int tls_attach(struct stream *s, SSL *ssl, int fd, enum stream_tls mode)
{
    BIO *rb;
    if (!SSL_set_fd(ssl, fd))
        return -1;
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    rb = SSL_get_rbio(ssl);
    if (rb) {
        BIO_set_callback_ex(rb, bio_cb);
        BIO_set_callback_arg(rb, (char *)s);
    }
    if (mode == STREAM_TLS_ACCEPT)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    s->handshaking = 1;
    return 0;
}

int stream_init(struct stream *s, struct stream_ctx *ctx, int fd, SSL *ssl, enum stream_tls mode,
                stream_cb cb, void *arg)
{
    memset(s, 0, sizeof(*s));
    s->ctx = ctx;
    s->cb = cb;
    s->arg = arg;
    s->reading = 1;
    if (ssl && tls_attach(s, ssl, fd, mode) < 0)
        return -1;
    /* Registered once, edge-triggered: the first wake-up reports the socket writable (and
     * readable, if data is already there), and no epoll_ctl follows until the close. */
    if (event_assign(&s->io, ctx->base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET,
                     io_cb, s) < 0 ||
        evtimer_assign(&s->timer, ctx->base, timer_cb, s) < 0 || event_add(&s->io, NULL) < 0)
        return -1;
    s->ssl = ssl;
    return 0;
}

int stream_start_tls(struct stream *s, SSL *ssl)
{
    int fd = (int)event_get_fd(&s->io);
    if (s->ssl || s->failed || s->eof || stream_input_length(s) != 0)
        goto fail;
    write_out(s);
    if (s->failed || stream_output_length(s) != 0 ||
        tls_attach(s, ssl, fd, STREAM_TLS_ACCEPT) < 0)
        goto fail;
    s->ssl = ssl;
    s->read_wants_write = s->write_wants_read = 0;
    s->tls_short = 0;
    /* The ClientHello may already be waiting, and its edge was seen while the stream was
     * plain: try the handshake from the loop. */
    event_active(&s->io, EV_READ, 1);
    return 0;
fail:
    SSL_free(ssl);
    return -1;
}

void stream_close(struct stream *s)
{
    int fd = (int)event_get_fd(&s->io);
    event_del(&s->io);
    event_del(&s->timer);
    if (s->ssl) {
        if (!s->handshaking && !s->failed) {
            /* close_notify, best effort: the socket is closed right after. */
            ERR_clear_error();
            SSL_shutdown(s->ssl);
            ERR_clear_error();
        }
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (fd >= 0)
        close(fd);
    if (s->in)
        buf_put(s->ctx, s->in);
    if (s->out)
        buf_put(s->ctx, s->out);
    s->in = s->out = NULL;
}

unsigned stream_settle(struct stream *s)
{
    unsigned ev;
    if (s->failed) {
        if (!s->fail_reported)
            event_active(&s->io, EV_WRITE, 1);
        return 0;
    }
    ev = write_out(s);
    if (s->failed) {
        event_active(&s->io, EV_WRITE, 1); /* reported from the loop, not to this caller */
        return 0;
    }
    if (s->reading && s->readable && !s->eof && !s->handshaking && s->read_high &&
        stream_input_length(s) < s->read_high)
        event_active(&s->io, EV_READ, 1);
    return ev;
}

void stream_park(struct stream *s)
{
    if (s->in && evbuffer_get_length(s->in) == 0) {
        buf_put(s->ctx, s->in);
        s->in = NULL;
    }
    if (s->out && evbuffer_get_length(s->out) == 0) {
        buf_put(s->ctx, s->out);
        s->out = NULL;
    }
}

void stream_shutdown_write(struct stream *s)
{
    if (s->ssl == NULL)
        shutdown(event_get_fd(&s->io), SHUT_WR);
}

int stream_clean_eof(const struct stream *s)
{
    return s->ssl && (SSL_get_shutdown(s->ssl) & SSL_RECEIVED_SHUTDOWN);
}

void stream_error_string(const struct stream *s, char *buf, size_t len)
{
    if (s->ssl_error)
        ERR_error_string_n(s->ssl_error, buf, len);
    else if (s->sys_errno)
        snprintf(buf, len, "%s", strerror(s->sys_errno));
    else
        snprintf(buf, len, "connection closed");
}
