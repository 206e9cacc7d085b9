#!/bin/bash
# apple-auth-proxy-healthcheck [ADDR [PATH]]: exit 0 when GET PATH (default /healthz) on the
# admin listener answers 200.
#
# The container's HEALTHCHECK. It uses bash's /dev/tcp, so the runtime image needs no HTTP
# client (curl would add libcurl and a dozen libraries to an image whose point is to be small).
# The admin address is ADDR, else $APPLE_AUTH_PROXY_ADMIN_LISTEN (the image sets it), else
# 127.0.0.1:9901; a wildcard host (0.0.0.0, ::) is reached through loopback. PATH may be /readyz.
set -u
addr=${1:-${APPLE_AUTH_PROXY_ADMIN_LISTEN:-127.0.0.1:9901}}
path=${2:-/healthz}
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
case $host in
  "" | 0.0.0.0 | "*") host=127.0.0.1 ;;
  "::") host=::1 ;;
esac
case $path in
  /*) ;;
  *) echo "healthcheck: PATH must start with /: '$path'" >&2; exit 1 ;;
esac
case $port in
  "" | *[!0-9]*) echo "healthcheck: no port in admin address '$addr'" >&2; exit 1 ;;
esac
if ! exec 3<>"/dev/tcp/$host/$port"; then
  echo "healthcheck: cannot connect to $host:$port" >&2
  exit 1
fi
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=
IFS= read -r -t 5 status <&3
status=${status%$'\r'}
case $status in
  "HTTP/1."[01]" 200"*) exit 0 ;;
esac
echo "healthcheck: GET http://$host:$port$path answered '${status:-nothing}'" >&2
exit 1
