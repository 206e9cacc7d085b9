/* cli_exchange: the command line's access-token exchanges (`token` and `check` for the maps and
 * apple-business credentials), on the proxy's own upstream code. */
#ifndef AAP_PROXY_CLI_EXCHANGE_H
#define AAP_PROXY_CLI_EXCHANGE_H

#include "conf/conf.h"

/* `token --credential NAME` for an exchanged credential: one exchange, the access token alone
 * on stdout. Takes *conf (set to NULL). Returns the exit status: 0, or 1 with the reason on
 * stderr. */
int cli_exchange_token(struct conf **conf, const char *name);

/* `check`: one exchange per exchanged credential used by a route, a line each on stdout (the
 * token never printed). Takes *conf (set to NULL) when there is any. Returns 0, or 1 when one
 * failed. */
int cli_exchange_check(struct conf **conf);

#endif
