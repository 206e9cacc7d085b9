/* log: the error log (leveled lines on stderr); never given tokens, keys or client secrets. */
#ifndef AAP_PROXY_LOG_H
#define AAP_PROXY_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* The lowest level written (default LOG_INFO; APPLE_AUTH_PROXY_LOG_LEVEL=debug|info|warn|error). */
void log_set_level(enum log_level level);
int log_parse_level(const char *name, enum log_level *out);
int log_enabled(enum log_level level);

/* One line: "2026-11-29T01:02:03.456Z warn message". Thread-safe (one write per line). */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
