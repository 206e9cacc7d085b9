/* cli_ca_cert: the `ca-cert` subcommand (prints the interception CA's certificate). */
#ifndef AAP_PROXY_CLI_CA_CERT_H
#define AAP_PROXY_CLI_CA_CERT_H

/* argv: the arguments after "ca-cert". Returns the exit status (0, 1 runtime, 2 usage). */
int cli_ca_cert(int argc, char **argv);

#endif
