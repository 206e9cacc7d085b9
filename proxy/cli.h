/* cli: what every subcommand shares: exit statuses, loading the configuration the way the
 * command line resolves it (and moving key material out of the environment), message output. */
#ifndef AAP_PROXY_CLI_H
#define AAP_PROXY_CLI_H

#include "conf/conf.h"
#include "proxy/preflight.h"

#define CLI_EXIT_RUNTIME 1
#define CLI_EXIT_USAGE 2

/* Loads the configuration (path, else $APPLE_AUTH_PROXY_CONFIG, else the environment), prints
 * its warnings and errors to stderr, and removes the key material it read from the process
 * environment. Returns NULL on failure; the caller frees the result with conf_free. */
struct conf *cli_load(const char *path);

/* Prints each non-empty line of text to stderr after prefix. */
void cli_print_lines(const char *prefix, const char *text);

/* A preflight failure or warning on stderr, the way configuration errors are printed
 * ("apple-auth-proxy: WHAT: message", "apple-auth-proxy: warning: WHAT: message"); other
 * outcomes print nothing. */
void cli_report_problem(enum preflight_outcome outcome, const char *what, const char *msg);

/* True for the arguments that ask a command for its usage: --help, -h. */
int cli_is_help(const char *arg);

/* The getenv the configuration reads through: the private table of key material moved out of
 * the environment by cli_load, then the environment itself. */
const char *cli_getenv(const char *name);
/* Wipes and frees that table (at exit). */
void cli_secrets_free(void);

/* The subcommands: argv holds the arguments after the command's name. Each returns the process
 * exit status. */
int cli_serve(int argc, char **argv);
int cli_token(int argc, char **argv);
int cli_check(int argc, char **argv);
int cli_client_key(int argc, char **argv);

#endif
