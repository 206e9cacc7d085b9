#!/usr/bin/env bash
# fresh-machine: the README's first commands on a new Debian 12 that has nothing but make and git.
#
#   bash .ci/fresh-machine.sh          (as root; called from .ci/run)
#
# In a container made from the debootstrapped Debian 12 root that docker/smoke.sh builds on
# (docker/base-image.sh, kept in buildah's storage and reused), run with buildah's chroot
# isolation:
#   1. apt-get installs make and git, nothing else (no recommends);
#   2. a clean clone of this repository's HEAD goes to /root/apple-auth-proxy;
#   3. `make run` with no configuration at all installs the build dependencies (apt-get, from the
#      host's Debian mirror, which the base image's sources name), builds, and stops with the
#      proxy's own "no configuration" message and the pointer to `make demo`;
#   4. `make demo` succeeds;
#   5. `make run` with a key made now and fastlane's variables (environment-only mode) serves
#      /healthz and /readyz and forwards GET /v1/apps to the stand-in for Apple, which checks the
#      token. The stand-in listens on 127.0.0.1:443 as api.appstoreconnect.apple.com (an
#      /etc/hosts line in the container) with a test CA named by SSL_CERT_FILE.
# Steps 4 and 5 run in a private network namespace (unshare --net): nothing they start can reach
# or collide with the host's ports. At exit every process started in the container is ended
# (checked by each process's root directory) and the container is removed.
# Environment: AAP_FRESH_KEEP=1 keeps the container and the logs for a look afterwards.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
steps_name=fresh-machine
# shellcheck source=steps.sh
. "$top/.ci/steps.sh"
ctr=""
mnt=""
run_pid=""
work=""
src=/root/apple-auth-proxy

# Every process whose root directory is the container's (what buildah run started, and their
# children, even those that left the process group): ended, first with TERM, then KILL. buildah's
# chroot isolation enters a bind mount of the container's file system at a path of its own, so
# the root is recognised by its device and inode, which a bind mount shares, not by its path.
container_pids() {
  local p id
  [ -n "$mnt" ] || return 0
  id=$(stat -c %d:%i "$mnt/") || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %d:%i "$p/root/" 2>/dev/null)" = "$id" ] && echo "${p#/proc/}"
  done
  return 0
}
end_container_processes() {
  local pids
  pids=$(container_pids)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 50); do
    [ -n "$(container_pids)" ] || return 0
    sleep 0.1
  done
  pids=$(container_pids)
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  return 0
}

cleanup() {
  local rc=$?
  set +e
  stop_group "$run_pid"
  end_container_processes
  if [ -n "$(container_pids)" ]; then
    say "processes still running in the container: $(container_pids | tr '\n' ' ')"
    rc=1
  fi
  if [ -n "$ctr" ]; then
    if [ "${AAP_FRESH_KEEP:-0}" = 1 ]; then
      say "container kept: $ctr (buildah rm $ctr)"
    else
      buildah umount "$ctr" >/dev/null 2>&1
      buildah rm "$ctr" >/dev/null 2>&1
    fi
  fi
  if [ -n "$work" ]; then
    if [ "${AAP_FRESH_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
      say "logs kept in $work"
    else
      rm -rf "$work"
    fi
  fi
  [ "$rc" = 0 ] && say "OK in $(($(date +%s) - t_start))s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One command in the container, as root, in the repository's clone (once it exists), with the
# image's environment only (nothing of this shell's: no key variables, no proxy settings).
# Started in its own process group so that a timeout or an exit ends all of it; no step may take
# more than 30 minutes (a stuck mirror fails the stage, not the whole CI run's time).
in_container() {
  setsid timeout -k 10 1800 buildah run --isolation chroot --network host --workingdir "$1" "$ctr" -- "${@:2}" \
    </dev/null &
  run_pid=$!
  local rc=0
  wait "$run_pid" || rc=$?
  run_pid=""
  return "$rc"
}

begin "checking the tools"
[ "$(id -u)" = 0 ] || fail "run as root (buildah and chroot need it)"
for t in git unshare ip; do
  command -v "$t" >/dev/null || fail "$t is missing"
done
git -C "$top" rev-parse --verify HEAD >/dev/null 2>&1 || fail "$top is not a git checkout with a commit"
if [ -n "$(git -C "$top" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  say "note: uncommitted changes in $top are not part of the clean clone"
fi
work=$(mktemp -d /var/tmp/aap-fresh.XXXXXX)

begin "the Debian 12 base image"
base=$(bash "$top/docker/base-image.sh") || fail "docker/base-image.sh (see above)"
ctr=$(buildah from --pull=false --quiet "$base") || fail "buildah from $base"
mnt=$(buildah mount "$ctr") || fail "buildah mount $ctr"
[ ! -e "$mnt/usr/bin/make" ] && [ ! -e "$mnt/usr/bin/cmake" ] && [ ! -e "$mnt/usr/bin/cc" ] ||
  fail "the base image is not fresh: it has make, cmake or cc"

begin "apt-get install make git (nothing else)"
in_container / bash -c 'export DEBIAN_FRONTEND=noninteractive;
  apt-get update -qq && apt-get install -y -qq --no-install-recommends make git' \
  >"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; fail "apt-get install make git"; }

begin "a clean clone of $(git -C "$top" rev-parse --short HEAD) into $src"
git clone -q --no-hardlinks "$top" "$mnt$src" 2>"$work/clone.log" ||
  { cat "$work/clone.log" >&2; fail "git clone"; }
git -C "$mnt$src" checkout -q --detach "$(git -C "$top" rev-parse HEAD)" || fail "git checkout"

begin "make run with no configuration: installs, builds, and says what to set"
rc=0
in_container "$src" make run JOBS="$(nproc)" >"$work/run-unconfigured.log" 2>&1 || rc=$?
grep -q '^apple-auth-proxy: no configuration: ' "$work/run-unconfigured.log" &&
  grep -q 'make demo' "$work/run-unconfigured.log" && [ "$rc" != 0 ] ||
  { tail -40 "$work/run-unconfigured.log" >&2; fail "make run (exit $rc) did not end with the proxy's no-configuration message and the pointer to make demo"; }
grep -q '^deps: installing ' "$work/run-unconfigured.log" ||
  { tail -40 "$work/run-unconfigured.log" >&2; fail "make run did not install the dependencies"; }
say "$(grep -c '' "$work/run-unconfigured.log") lines of output, ending:"
grep -E '^(apple-auth-proxy|make run): ' "$work/run-unconfigured.log" | sed 's/^/    /' >&2

# The last two steps in a private network namespace with its own loopback: the proxy's default
# ports (8080, 9901) and the stand-in's 443 are the container's alone.
private_net() {
  local log=$1
  shift
  setsid timeout -k 10 600 unshare --net bash -c 'ip link set lo up && exec "$@"' private-net "$@" \
    >"$log" 2>&1 </dev/null &
  run_pid=$!
  local rc=0
  wait "$run_pid" || rc=$?
  run_pid=""
  return "$rc"
}

begin "make demo"
private_net "$work/demo.log" buildah run --isolation chroot --network host --workingdir "$src" \
  "$ctr" -- make demo ||
  { tail -40 "$work/demo.log" >&2; fail "make demo exited non-zero"; }

begin "make run with a new key and fastlane's variables: /healthz, and a request to the stand-in"
# The script runs inside the container (bash, python3, openssl and curl are there now: make's
# dependencies); it is an argument, not standard input, which buildah run would not pass.
serve_script=$(cat <<'EOS'
set -u
cd "$1"
w=$(mktemp -d)
kid=$(tr -dc 'A-Z0-9' </dev/urandom | head -c 10)
issuer=$(cat /proc/sys/kernel/random/uuid)
host=api.appstoreconnect.apple.com
mkdir -p "$w/keys"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$w/AuthKey_$kid.p8" 2>/dev/null &&
  chmod 600 "$w/AuthKey_$kid.p8" &&
  openssl pkey -in "$w/AuthKey_$kid.p8" -pubout -out "$w/keys/$kid.pem" 2>/dev/null ||
  { echo "openssl could not make the key"; exit 1; }
python3 tests/upstream/certs.py "$w/certs" >"$w/certs.json" || { echo "certs.py failed"; exit 1; }
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$w/certs.json" "$1"; }
python3 tests/upstream/standin.py --cert "$(field good_cert)" --key "$(field good_key)" \
  --host 127.0.0.1 --port 443 --keys-dir "$w/keys" --log "$w/standin.jsonl" \
  --port-file "$w/standin.port" >"$w/standin.out" 2>&1 &
standin=$!
setsid env APP_STORE_CONNECT_API_KEY_KEY_ID="$kid" APP_STORE_CONNECT_API_KEY_ISSUER_ID="$issuer" \
  APP_STORE_CONNECT_API_KEY_KEY_FILEPATH="$w/AuthKey_$kid.p8" SSL_CERT_FILE="$(field ca_cert)" \
  make run >"$w/run.out" 2>&1 </dev/null &
proxy=$!
stop() {
  kill -TERM -- "-$proxy" 2>/dev/null
  kill -TERM "$standin" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$proxy" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$proxy" 2>/dev/null
  wait 2>/dev/null
}
trap stop EXIT
# The upstream's name is the stand-in's address here (the proxy's resolver reads /etc/hosts).
echo "127.0.0.1 $host" >>/etc/hosts
for _ in $(seq 100); do [ -s "$w/standin.port" ] && break; sleep 0.1; done
[ "$(cat "$w/standin.port" 2>/dev/null)" = 443 ] || { echo "the stand-in did not start:"; cat "$w/standin.out"; exit 1; }
up=0
for _ in $(seq 600); do
  kill -0 "$proxy" 2>/dev/null || { echo "make run exited:"; cat "$w/run.out"; exit 1; }
  if [ "$(curl -s --noproxy '*' -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:9901/healthz)" = 200 ]; then
    up=1; break
  fi
  sleep 0.2
done
[ "$up" = 1 ] || { echo "no /healthz 200 on 127.0.0.1:9901 after 120 s:"; cat "$w/run.out"; exit 1; }
echo "GET /healthz: 200"
for _ in $(seq 100); do
  code=$(curl -s --noproxy '*' -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:9901/readyz)
  [ "$code" = 200 ] && break
  sleep 0.1
done
[ "$code" = 200 ] || { echo "/readyz answered $code"; cat "$w/run.out"; exit 1; }
echo "GET /readyz: 200"
code=$(curl -sS --noproxy '*' -m 20 -o "$w/apps.json" -w '%{http_code}' http://127.0.0.1:8080/v1/apps)
[ "$code" = 200 ] || { echo "GET /v1/apps through the proxy answered $code:"; cat "$w/apps.json"; echo; cat "$w/run.out"; exit 1; }
echo "GET /v1/apps through the proxy: 200"
python3 - "$w/standin.jsonl" "$kid" "$issuer" "$host" <<'EOF' || { cat "$w/run.out"; exit 1; }
import json, sys
log, kid, issuer, host = sys.argv[1:5]
reqs = [e for e in map(json.loads, open(log)) if e.get("event") == "request"]
assert reqs, "the stand-in logged no request"
r = reqs[-1]
problems = []
if r.get("host") != host: problems.append("host %r" % r.get("host"))
if r.get("path") != "/v1/apps": problems.append("path %r" % r.get("path"))
if r.get("token_ok") is not True: problems.append("token refused: %r" % r.get("token_error"))
if (r.get("token_header") or {}).get("kid") != kid: problems.append("kid %r" % (r.get("token_header") or {}).get("kid"))
if (r.get("token_claims") or {}).get("iss") != issuer: problems.append("iss %r" % (r.get("token_claims") or {}).get("iss"))
if problems:
    sys.exit("the stand-in saw: " + "; ".join(problems))
print("the stand-in accepted the token (kid %s, iss %s)" % (kid, issuer))
EOF
echo "serve: ok"
EOS
)
private_net "$work/serve.log" buildah run --isolation chroot --network host --workingdir "$src" \
  "$ctr" -- bash -c "$serve_script" fresh-serve "$src" ||
  { cat "$work/serve.log" >&2; fail "make run with fastlane's variables (above)"; }
grep -q '^serve: ok$' "$work/serve.log" || { cat "$work/serve.log" >&2; fail "the serve script stopped early"; }
sed 's/^/    /' "$work/serve.log" >&2

begin "no process left in the container"
end_container_processes
[ -z "$(container_pids)" ] || fail "processes still running: $(container_pids | tr '\n' ' ')"
step="done"
