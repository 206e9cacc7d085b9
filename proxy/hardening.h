/* hardening: what the process does to itself at start so that its secrets stay in it. */
#ifndef AAP_PROXY_HARDENING_H
#define AAP_PROXY_HARDENING_H

/* The variable that turns core dumps back on, for debugging a crash. */
#define HARDENING_CORE_DUMPS_ENV "APPLE_AUTH_PROXY_DEBUG_CORE_DUMPS"

/* Makes libevent wipe every buffer it frees (see hardening.c), then turns core dumps of this
 * process off: RLIMIT_CORE 0 (soft and hard) and PR_SET_DUMPABLE 0
 * (which also keeps processes of the same user from attaching a debugger or reading
 * /proc/PID/mem, environ and the like). With APPLE_AUTH_PROXY_DEBUG_CORE_DUMPS=1 both are left
 * as the environment set them, and a warning says a dump would hold the keys. Called first
 * thing in main, before any key is read. Returns 0, or -1 when the kernel refused (the reason
 * is printed; the caller stops: a proxy that cannot keep its keys out of dumps does not run). */
int hardening_apply(void);

#endif
