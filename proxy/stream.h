/* stream: a non-blocking socket (plain TCP or TLS) with an input and an output buffer, the
 * proxy's own replacement for libevent's bufferevents on the request path.
 *
 * What it does differently, and why (docs/performance.md):
 * - The socket is registered once, edge-triggered for reading and writing, and never modified
 *   again: no epoll_ctl per request.
 * - Output is written as soon as the owner calls stream_settle, in the same loop iteration
 *   that produced it (one writev for a head and its body), instead of after the next
 *   epoll_wait has reported the socket writable. Only a full socket waits for EPOLLOUT.
 * - Reads go straight into the input buffer's free space (no FIONREAD ioctl), and a short read
 *   on TCP ends the reading without a read that returns EAGAIN.
 * - Timeouts are deadlines kept in the stream; the single timer of a stream is only re-armed
 *   when a deadline comes earlier than the one it is set for, so a keep-alive connection does
 *   not touch libevent's timer heap on every request.
 * - Idle streams give their (empty) buffers back to a per-worker cache (stream_park).
 *
 * Every event of one wake-up reaches the owner as one call, cb(s, events, arg). The stream
 * does not touch itself after that call, so the owner may close it there. No other stream
 * function calls the owner back: failures found while writing from stream_settle are reported
 * from the event loop.
 */
#ifndef AAP_PROXY_STREAM_H
#define AAP_PROXY_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h> /* before event_struct.h, which defines TAILQ macros otherwise */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

/* Per worker: the event base, and spare empty buffers for streams that become busy again. */
#define STREAM_SPARE_BUFFERS 64
#define STREAM_SCRATCH 16384
struct stream_ctx {
    struct event_base *base;
    /* Reads into an empty buffer land here first and are copied: a small message then
     * takes a small buffer chain instead of a chain sized for the largest read. */
    char scratch[STREAM_SCRATCH];
    struct evbuffer *spare[STREAM_SPARE_BUFFERS];
    size_t nspare;
};

enum stream_event {
    STREAM_READ = 0x01,      /* new input */
    STREAM_DRAINED = 0x02,   /* output was written and is at or below the low mark */
    STREAM_EOF = 0x04,       /* the peer ended its side (TLS: with or without close_notify) */
    STREAM_ERROR = 0x08,     /* a socket or TLS error (see stream_error) */
    STREAM_RTIMEOUT = 0x10,  /* reading enabled, no input for the read timeout */
    STREAM_WTIMEOUT = 0x20,  /* output waiting, no progress for the write timeout */
    STREAM_ALARM = 0x40,     /* the owner's alarm (stream_set_alarm) */
    STREAM_CONNECTED = 0x80  /* the TLS handshake is complete */
};

enum stream_tls { STREAM_PLAIN, STREAM_TLS_ACCEPT, STREAM_TLS_CONNECT };

struct stream;
typedef void (*stream_cb)(struct stream *s, unsigned events, void *arg);

struct stream {
    struct event io;      /* the socket: EV_READ | EV_WRITE | EV_PERSIST | EV_ET */
    struct event timer;   /* the earliest deadline */
    struct stream_ctx *ctx;
    SSL *ssl;
    struct evbuffer *in, *out; /* NULL while parked */
    stream_cb cb;
    void *arg;
    uint64_t rd_deadline, wr_deadline, alarm; /* ms on the monotonic clock; 0: none */
    uint64_t armed;       /* when the timer is set to fire; 0: not set */
    uint32_t rto_ms, wto_ms;
    uint32_t read_high;   /* stop reading while the input holds this much (0: no limit) */
    uint32_t write_low;   /* STREAM_DRAINED when the output is at or below this */
    int sys_errno;        /* the socket error behind STREAM_ERROR, 0 if none */
    unsigned long ssl_error; /* the OpenSSL error behind STREAM_ERROR, 0 if none */
    unsigned reading : 1;     /* the owner wants input */
    unsigned readable : 1;    /* the socket may have input (an edge not yet read to the end) */
    unsigned writable : 1;    /* the socket may take output */
    unsigned handshaking : 1; /* TLS handshake in progress */
    unsigned read_wants_write : 1; /* SSL_read needs the socket writable */
    unsigned write_wants_read : 1; /* SSL_write needs the socket readable */
    unsigned eof : 1;
    unsigned failed : 1;
    unsigned fail_reported : 1;
    unsigned rdhup : 1;       /* the peer's FIN was seen (EPOLLRDHUP) */
    unsigned tls_short : 1;   /* TLS: the socket's last read returned less than asked */
};

/* Initialises ctx for the worker's base. */
void stream_ctx_init(struct stream_ctx *ctx, struct event_base *base);
void stream_ctx_deinit(struct stream_ctx *ctx);

/* Takes fd (non-blocking) and ssl (NULL for plain TCP; its fd is set here) and registers the
 * socket. Reading starts enabled. Returns 0, or -1 (fd and ssl still the caller's). */
int stream_init(struct stream *s, struct stream_ctx *ctx, int fd, SSL *ssl, enum stream_tls mode,
                stream_cb cb, void *arg);
/* Turns a plain stream whose input is empty into the server side of a TLS connection (takes
 * ssl; its fd is set here): what the output holds is written in plain text first, and must go
 * at once (a CONNECT's 200 is small). The handshake then runs as for STREAM_TLS_ACCEPT. Returns
 * 0, or -1 (ssl is freed; the stream stays plain). */
int stream_start_tls(struct stream *s, SSL *ssl);
/* Unregisters, sends close_notify on a TLS stream that completed its handshake (best
 * effort), frees the TLS session and closes the socket. */
void stream_close(struct stream *s);

void stream_setcb(struct stream *s, stream_cb cb, void *arg);
int stream_fd(const struct stream *s);

/* The buffers (allocated when parked). NULL only when out of memory. */
struct evbuffer *stream_input(struct stream *s);
struct evbuffer *stream_output(struct stream *s);
size_t stream_input_length(const struct stream *s);
size_t stream_output_length(const struct stream *s);

void stream_set_reading(struct stream *s, int on);
/* Read and write timeouts in ms (0: none), with bufferevent's meaning: the read timeout runs
 * while reading is enabled and restarts with every read; the write timeout runs while output
 * waits and restarts with every write. */
void stream_set_timeouts(struct stream *s, uint32_t rto_ms, uint32_t wto_ms);
/* A one-shot STREAM_ALARM in ms from now (0: cancel). */
void stream_set_alarm(struct stream *s, uint32_t ms);
void stream_set_watermarks(struct stream *s, uint32_t read_high, uint32_t write_low);

/* Writes what the output holds, as far as the socket takes it, and resumes reading that
 * stopped at the read mark once there is room. Returns STREAM_DRAINED when it wrote and the
 * output is at or below the low mark, else 0; never calls the owner. */
unsigned stream_settle(struct stream *s);

/* Gives empty buffers back to the worker's cache (an idle connection keeps none). */
void stream_park(struct stream *s);

/* Plain TCP: half-closes the sending side. */
void stream_shutdown_write(struct stream *s);

/* TLS: the peer ended with close_notify (a clean end, not a possible truncation). */
int stream_clean_eof(const struct stream *s);

/* A human-readable reason for STREAM_ERROR (TLS error string, or strerror). */
void stream_error_string(const struct stream *s, char *buf, size_t len);

/* The clocks, read once per event callback. Between stream_batch_begin() and
 * stream_batch_end() (every stream callback runs inside one; they nest) the first reading of
 * each clock is kept and every later call returns it, as an event loop keeps its time for one
 * pass: the work of one wake-up shares one time, and a burst of answers costs one clock read,
 * not several per answer. Outside a batch every call reads the clock. */
void stream_batch_begin(void);
void stream_batch_end(void);
/* Drops the readings kept in the current batch (after something that may have blocked): the
 * next call reads the clock again. */
void stream_clock_forget(void);
/* Microseconds and milliseconds on the monotonic clock. */
uint64_t stream_now_us(void);
uint64_t stream_now_ms(void);
/* Seconds since the epoch (CLOCK_REALTIME). */
double stream_wall_now(void);

#endif
