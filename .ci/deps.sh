#!/usr/bin/env bash
# Installs what apple-auth-proxy needs to build and test, from Debian's archive only.
# llhttp: Debian 12 ships 8.1.0, which predates request-smuggling fixes; when the system has
# no llhttp 9.2.1 or newer, Debian 13's libllhttp-dev is downloaded with a private apt
# configuration (the machine's sources are left alone) and unpacked into .deps/llhttp.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
deps_dir="$top/.deps"

packages=(build-essential cmake pkg-config libevent-dev libssl-dev libcjson-dev libnghttp2-dev
          libhiredis-dev ca-certificates)
if [ "${WITH_TEST_TOOLS:-1}" = 1 ]; then
  # What `make test` and .ci/run need beyond the build: cmocka, the stand-in's PyJWT, openssl
  # for test certificates, promtool for the metrics format, clang for the fuzz targets.
  packages+=(libcmocka-dev python3 python3-jwt python3-cryptography python3-yaml python3-requests openssl curl
             clang libclang-rt-14-dev prometheus)
  # The APNs stand-in and its tests speak HTTP/2 with python3-h2.
  packages+=(python3-h2)
  # The clients of the interception tests: Go's and Ruby's net/http, Node and npm (which
  # installs undici and the App Store Connect libraries from the npm registry). A Node from
  # elsewhere (NodeSource's nodejs carries its own npm) is kept.
  packages+=(golang-go ruby)
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
  # The shared-state tests start their own redis-server (Debian 12's serves TLS too, which
  # the TLS tests use) and read it with redis-cli.
  packages+=(redis-server redis-tools)
fi

if [ "${WITH_BENCH_TOOLS:-0}" = 1 ]; then
  # make bench (tests/bench/bench.py installs these itself when run as root).
  packages+=(nginx haproxy wrk nghttp2-client nghttp2-server strace valgrind linux-perf)
fi

# apt-get that waits for another apt or dpkg (a parallel `make test`, unattended-upgrades) instead
# of failing on its lock: dpkg's lock is waited for by apt itself (DPkg::Lock::Timeout); the lists
# and archives locks, which apt-get does not wait for, by trying again until APT_LOCK_WAIT
# seconds (default 600) have passed.
apt_get() {
  local deadline=$(( $(date +%s) + ${APT_LOCK_WAIT:-600} )) err rc
  err=$(mktemp)
  while :; do
    rc=0
    apt-get -o DPkg::Lock::Timeout="${APT_LOCK_WAIT:-600}" "$@" 2>"$err" || rc=$?
    if [ "$rc" = 0 ] || ! grep -qE 'Could not get lock|Unable to lock' "$err" ||
       [ "$(date +%s)" -ge "$deadline" ]; then
      cat "$err" >&2
      rm -f "$err"
      return "$rc"
    fi
    echo "deps: apt is busy (another apt-get or dpkg holds its lock); waiting" >&2
    sleep 3
  done
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "deps: missing packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# llhttp >= 9.2.1
llhttp_ok() {
  local hdr=$1
  [ -f "$hdr" ] || return 1
  local maj min pat
  maj=$(awk '/#define LLHTTP_VERSION_MAJOR/ {print $3}' "$hdr")
  min=$(awk '/#define LLHTTP_VERSION_MINOR/ {print $3}' "$hdr")
  pat=$(awk '/#define LLHTTP_VERSION_PATCH/ {print $3}' "$hdr")
  [ -n "$maj" ] || return 1
  [ $((maj * 10000 + min * 100 + pat)) -ge 90201 ]
}
if llhttp_ok /usr/include/llhttp.h && ls /usr/lib/*/libllhttp.a >/dev/null 2>&1; then
  echo "deps: system llhttp is recent enough"
  exit 0
fi
if llhttp_ok "$deps_dir/llhttp/usr/include/llhttp.h"; then
  exit 0
fi

mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "deps: cannot find the Debian mirror in /etc/apt" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/dl"
echo "deb $mirror trixie main" > "$work/sources.list"
aptopts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache"
         -o APT::Sandbox::User=root -o Debug::NoLocking=1)
echo "deps: fetching llhttp 9.2.1+ from Debian trixie ($mirror)"
apt-get "${aptopts[@]}" update -qq
(cd "$work/dl" && apt-get "${aptopts[@]}" download libllhttp-dev libllhttp9.2 >/dev/null)
rm -rf "$deps_dir/llhttp"
mkdir -p "$deps_dir/llhttp"
for deb in "$work"/dl/*.deb; do dpkg -x "$deb" "$deps_dir/llhttp"; done
llhttp_ok "$deps_dir/llhttp/usr/include/llhttp.h" || { echo "deps: the downloaded llhttp is older than 9.2.1" >&2; exit 1; }
echo "deps: llhttp unpacked into $deps_dir/llhttp"
