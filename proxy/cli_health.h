/* cli_health: the `health` command, a probe of a running proxy's admin listener. */
#ifndef AAP_CLI_HEALTH_H
#define AAP_CLI_HEALTH_H

/* `apple-auth-proxy health [--admin ADDR] [--ready] [--timeout SECONDS]`; argv holds the
 * options only (after "health"). Returns the exit status: 0 when GET /healthz (/readyz with
 * --ready) answered 200, 1 when it answered anything else or could not be asked, 2 for a usage
 * error. */
int cli_health(int argc, char **argv);

#endif
