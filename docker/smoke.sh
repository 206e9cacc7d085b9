#!/usr/bin/env bash
# smoke: builds the container image and proves it works end to end, on loopback only.
#
#   docker/smoke.sh            (as root; called from .ci/run)
#
# 1. Builds docker/Dockerfile: with `docker build` when a Docker engine answers (`docker info`),
#    otherwise with buildah (--isolation chroot). Without an engine, the Debian base image of the
#    build stage is made with debootstrap from the machine's Debian mirror and kept in buildah's
#    storage as localhost/debian:bookworm-slim, so later runs reuse it (docker/base-image.sh:
#    AAP_SMOKE_REFRESH_BASE=1 remakes it; it is remade anyway when older than
#    AAP_SMOKE_BASE_MAX_AGE_DAYS, default 30).
# 2. Starts the test stand-in for Apple (tests/upstream/standin.py) on 127.0.0.1 with a test CA
#    (tests/upstream/certs.py) and a P-256 key made now with openssl.
# 3. Checks the image: metadata (user, environment, ports, healthcheck, entrypoint), its size
#    (at most AAP_SMOKE_MAX_BYTES, default 40 MB), its files (no /bin/sh or any other shell, no
#    apt or dpkg; /etc/passwd holds uid 10001 alone), then `check` and `token --decode` in
#    environment-only mode (fastlane's variables).
# 4. Runs `serve` in a container on the host's network namespace, listening on 127.0.0.1 only,
#    with a mounted configuration (APPLE_AUTH_PROXY_CONFIG) whose route goes to the stand-in
#    ("address" + a mounted "ca_file"), the key mounted like a secret; sends GET /v1/apps through
#    it and checks the 200 and that the stand-in verified the token; checks /healthz from the host
#    and with the image's own HEALTHCHECK command (`apple-auth-proxy health`).
# 5. Runs `serve` again with the image's defaults untouched (0.0.0.0:8080, admin 0.0.0.0:9901,
#    environment-only mode) inside a private network namespace (buildah: unshare --net; docker:
#    --network none), and checks the listeners, /healthz, /readyz and the HEALTHCHECK command.
# Any failing step stops the script with "smoke: FAILED at step: ..." and a non-zero status.
# Containers, processes and files it made are removed at exit (AAP_SMOKE_KEEP=1 keeps the files).
#
# Environment: AAP_SMOKE_BUILDER=docker|buildah (default: docker when `docker info` works),
# AAP_SMOKE_IMAGE (default localhost/apple-auth-proxy:smoke), AAP_SMOKE_MIRROR (the Debian mirror
# for debootstrap; default the URIs: line of /etc/apt/sources.list.d/debian.sources).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
image=${AAP_SMOKE_IMAGE:-localhost/apple-auth-proxy:smoke}
base_image=localhost/debian:bookworm-slim
# The image's size bound, in bytes as `docker images` counts them (uncompressed, 1 MB = 10^6).
max_bytes=${AAP_SMOKE_MAX_BYTES:-40000000}
python=/usr/bin/python3
steps_name=smoke
# shellcheck source=../.ci/steps.sh
. "$top/.ci/steps.sh"

work=""
standin_pid=""
proxy_pid=""
buildah_ctr=""
docker_ctr=""
buildah_ctrs=()
docker_ctrs=()

cleanup() {
  local rc=$?
  set +e
  # buildah run was started with setsid: its process group holds the proxy.
  stop_group "$proxy_pid"
  for c in "$docker_ctr" "${docker_ctrs[@]}"; do
    [ -n "$c" ] && docker rm -f "$c" >/dev/null 2>&1
  done
  for c in "$buildah_ctr" "${buildah_ctrs[@]}"; do
    [ -n "$c" ] && buildah rm "$c" >/dev/null 2>&1
  done
  if [ -n "$standin_pid" ]; then
    kill -TERM "$standin_pid" 2>/dev/null
    wait "$standin_pid" 2>/dev/null
  fi
  if [ -n "$work" ]; then
    if [ "${AAP_SMOKE_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
      say "files kept in $work"
    else
      rm -rf "$work"
    fi
  fi
  if [ "$rc" = 0 ]; then
    say "OK in $(($(date +%s) - t_start))s"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools --------------------------------------------------------------------------------------

begin "checking the tools"
[ "$(id -u)" = 0 ] || fail "run as root (buildah and debootstrap need it)"
for t in openssl curl "$python"; do
  command -v "$t" >/dev/null || fail "$t is missing (bash .ci/deps.sh installs it)"
done
builder=${AAP_SMOKE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    builder=docker
  else
    builder=buildah
  fi
fi
case $builder in
  docker) ;;
  buildah)
    missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v unshare >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
      say "installing ${missing[*]} from Debian"
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
          "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null; } ||
        fail "cannot install ${missing[*]}"
    fi
    ;;
  *) fail "AAP_SMOKE_BUILDER must be docker or buildah, not '$builder'" ;;
esac
say "builder: $builder"

work=$(mktemp -d /var/tmp/aap-smoke.XXXXXX)
chmod 755 "$work"

# ---- build --------------------------------------------------------------------------------------

if [ "$builder" = buildah ]; then
  begin "making the base image $base_image"
  bash "$top/docker/base-image.sh" >/dev/null || fail "docker/base-image.sh (see above)"
  begin "building $image with buildah"
  # --format docker keeps HEALTHCHECK (the OCI image format has no field for it); --layers caches
  # the dependency layer across runs.
  buildah bud --isolation chroot --layers --format docker --pull=false \
    --build-arg BUILD_IMAGE="$base_image" \
    -f "$top/docker/Dockerfile" -t "$image" "$top" >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; fail "buildah bud (log: $work/build.log)"; }
  # Each build leaves the previous build's layers behind as untagged images. Remove the ones of
  # this Dockerfile (by its title label) that this build neither used nor made; any other image
  # on the machine is left alone.
  buildah images --filter dangling=true --filter label=org.opencontainers.image.title=apple-auth-proxy \
    --noheading --no-trunc --format '{{.ID}}' 2>/dev/null | sed 's/^sha256://' | while read -r id; do
    grep -q "${id:0:11}" "$work/build.log" || buildah rmi "$id" >/dev/null 2>&1 || true
  done
else
  begin "building $image with docker"
  docker build -f "$top/docker/Dockerfile" -t "$image" "$top" >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; fail "docker build (log: $work/build.log)"; }
fi

# ---- image metadata -----------------------------------------------------------------------------

begin "checking the image configuration"
if [ "$builder" = buildah ]; then
  buildah inspect --type image "$image" >"$work/inspect.json" || fail "buildah inspect $image"
else
  docker image inspect "$image" >"$work/inspect.json" || fail "docker image inspect $image"
fi
"$python" - "$work/inspect.json" <<'EOF' || fail "image configuration (printed above)"
import json, sys
d = json.load(open(sys.argv[1]))
# buildah: {"Docker": {"config": {...}}}; docker: [{"Config": {...}}]
c = d[0]["Config"] if isinstance(d, list) else d["Docker"]["config"]
env = dict(e.split("=", 1) for e in c.get("Env") or [])
problems = []
def want(cond, what):
    if not cond:
        problems.append(what)
want(c.get("User") == "10001:10001", "User is %r, not 10001:10001" % c.get("User"))
want(env.get("APPLE_AUTH_PROXY_LISTEN") == "0.0.0.0:8080", "APPLE_AUTH_PROXY_LISTEN")
want(env.get("APPLE_AUTH_PROXY_ADMIN_LISTEN") == "0.0.0.0:9901", "APPLE_AUTH_PROXY_ADMIN_LISTEN")
want(env.get("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS") == "true", "APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS")
want(set(c.get("ExposedPorts") or {}) == {"8080/tcp", "9901/tcp"}, "ExposedPorts %r" % c.get("ExposedPorts"))
want(c.get("Entrypoint") == ["apple-auth-proxy"], "Entrypoint %r" % c.get("Entrypoint"))
want(c.get("Cmd") == ["serve"], "Cmd %r" % c.get("Cmd"))
hc = c.get("Healthcheck") or {}
want(hc.get("Test") == ["CMD", "apple-auth-proxy", "health"], "Healthcheck %r" % hc)
if problems:
    print("image config: " + "; ".join(problems), file=sys.stderr)
    print(json.dumps(c, indent=1), file=sys.stderr)
    sys.exit(1)
EOF

# ---- image contents -----------------------------------------------------------------------------

begin "checking the image's size and files (at most $max_bytes bytes, no shell, no apt)"
# The image's file list ("TYPE SIZE PATH", from find -printf or tar -tv) and its /etc/passwd.
if [ "$builder" = buildah ]; then
  ctr=$(buildah from --pull=false --quiet "$image") || fail "buildah from $image"
  buildah_ctrs+=("$ctr")
  mnt=$(buildah mount "$ctr") || fail "buildah mount"
  (cd "$mnt" && find . -mindepth 1 -printf '%y %s %p\n') >"$work/files.txt" || fail "listing the image's files"
  cp "$mnt/etc/passwd" "$work/passwd" 2>/dev/null || : >"$work/passwd"
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null 2>&1
else
  ctr=$(docker create "$image") || fail "docker create $image"
  docker_ctrs+=("$ctr")
  docker export "$ctr" | tar -tvf - |
    awk '{t = substr($1, 1, 1); if (t == "-") t = "f"; printf "%s %s ./%s\n", t, $3, $6}' \
    >"$work/files.txt" || fail "listing the image's files"
  docker cp "$ctr:/etc/passwd" - 2>/dev/null | tar -xOf - >"$work/passwd" || : >"$work/passwd"
  docker rm -f "$ctr" >/dev/null 2>&1
fi
"$python" - "$work/files.txt" "$work/passwd" "$max_bytes" <<'EOF' || fail "the image's files (printed above)"
import os, sys
files, passwd, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
entries = []
for line in open(files):
    kind, size, path = line.rstrip("\n").split(" ", 2)
    path = path[2:] if path.startswith("./") else path.lstrip("/")
    entries.append((kind, int(size), "/" + os.path.normpath(path)))
total = sum(size for kind, size, _ in entries if kind == "f")
paths = {path for _, _, path in entries}
problems = []
if total > max_bytes:
    problems.append("%d bytes of files, more than %d" % (total, max_bytes))
shells = ("sh", "bash", "dash", "ash", "busybox", "zsh", "ksh", "mksh", "tcsh", "csh")
for d in ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"):
    for name in shells + ("apt", "apt-get", "dpkg"):
        if os.path.join(d, name) in paths:
            problems.append("%s is in the image" % os.path.join(d, name))
if "/usr/local/bin/apple-auth-proxy" not in paths:
    problems.append("no /usr/local/bin/apple-auth-proxy")
if any(p.startswith(("/var/lib/dpkg", "/var/lib/apt")) for p in paths):
    problems.append("package manager state (/var/lib/dpkg or /var/lib/apt) is in the image")
users = [l.split(":") for l in open(passwd).read().splitlines() if l.strip()]
if [(u[0], u[2], u[3]) for u in users if len(u) > 3] != [("apple-auth-proxy", "10001", "10001")]:
    problems.append("/etc/passwd is not the one entry apple-auth-proxy:x:10001:10001: %r" % users)
print("smoke: image: %d files, %d bytes (%.1f MB)" % (
    sum(1 for k, _, _ in entries if k == "f"), total, total / 1e6), file=sys.stderr)
if problems:
    print("image contents: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
EOF

# ---- key, certificates, stand-in ----------------------------------------------------------------

begin "making the test key and certificates"
kid=$("$python" -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10)))')
issuer=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$work/secrets" "$work/keys" "$work/certs" "$work/etc"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/secrets/AuthKey_$kid.p8" 2>"$work/openssl.log" ||
  fail "openssl genpkey ($(cat "$work/openssl.log"))"
head -1 "$work/secrets/AuthKey_$kid.p8" | grep -q -- '-----BEGIN PRIVATE KEY-----' ||
  fail "openssl did not write a PKCS#8 key"
openssl pkey -in "$work/secrets/AuthKey_$kid.p8" -pubout -out "$work/keys/$kid.pem" 2>>"$work/openssl.log" ||
  fail "openssl pkey -pubout"
# The container runs as uid 10001: the key is that user's alone, like a mounted secret.
chown -R 10001:10001 "$work/secrets"
chmod 700 "$work/secrets"
chmod 400 "$work/secrets/AuthKey_$kid.p8"
"$python" "$top/tests/upstream/certs.py" "$work/certs" >"$work/certs.json" 2>"$work/certs.log" ||
  { cat "$work/certs.log" >&2; fail "tests/upstream/certs.py"; }
ca_file=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["ca_cert"])' "$work/certs.json")
good_cert=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["good_cert"])' "$work/certs.json")
good_key=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["good_key"])' "$work/certs.json")
chmod -R a+rX "$work/certs"
cp "$ca_file" "$work/etc/ca.pem"
chmod 644 "$work/etc/ca.pem"

begin "starting the Apple stand-in on 127.0.0.1"
"$python" "$top/tests/upstream/standin.py" --cert "$good_cert" --key "$good_key" --host 127.0.0.1 \
  --port 0 --keys-dir "$work/keys" --log "$work/standin.jsonl" --port-file "$work/standin.port" \
  >"$work/standin.out" 2>&1 &
standin_pid=$!
for _ in $(seq 100); do
  [ -s "$work/standin.port" ] && break
  kill -0 "$standin_pid" 2>/dev/null || { cat "$work/standin.out" >&2; fail "the stand-in exited"; }
  sleep 0.1
done
[ -s "$work/standin.port" ] || fail "the stand-in did not write its port in 10 s"
standin_port=$(cat "$work/standin.port")

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
proxy_port=$(free_port)
admin_port=$(free_port)
while [ "$admin_port" = "$proxy_port" ]; do admin_port=$(free_port); done
# The file's addresses are loopback decoys: the container gets the real ones from
# APPLE_AUTH_PROXY_LISTEN / APPLE_AUTH_PROXY_ADMIN_LISTEN, which override the file (as the image's
# own 0.0.0.0 defaults do), so a proxy that ignored them fails here without listening anywhere
# but 127.0.0.1.
decoy_port=$(free_port)
decoy_admin_port=$(free_port)

cat >"$work/etc/config.json" <<EOF
{
  "listen": ["127.0.0.1:$decoy_port"],
  "admin_listen": "127.0.0.1:$decoy_admin_port",
  "workers": 2,
  "credentials": {
    "asc": {
      "profile": "app-store-connect",
      "key_id": "$kid",
      "issuer_id": "$issuer",
      "private_key_file": "/run/secrets/AuthKey_$kid.p8"
    }
  },
  "routes": [
    { "path_prefix": "/", "upstream": "https://api.appstoreconnect.apple.com", "credential": "asc",
      "address": "127.0.0.1:$standin_port", "ca_file": "/etc/apple-auth-proxy/ca.pem" }
  ]
}
EOF
chmod 644 "$work/etc/config.json"

# ---- running containers -------------------------------------------------------------------------

# One-shot command in a fresh container; extra arguments before "--" are environment
# assignments NAME=VALUE. Mounts: the key directory at /run/secrets, the config at
# /etc/apple-auth-proxy. Network: the host's (there is no other way without an engine); every
# address used is 127.0.0.1.
run_once() {
  local envs=() args
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  if [ "$builder" = buildah ]; then
    local ctr
    ctr=$(buildah from --pull=false --quiet "$image") || return 1
    buildah_ctr=$ctr
    args=()
    for e in "${envs[@]}"; do args+=(--env "$e"); done
    buildah run --isolation chroot --network host --user 10001:10001 "${args[@]}" \
      -v "$work/secrets:/run/secrets:ro" -v "$work/etc:/etc/apple-auth-proxy:ro" \
      "$ctr" -- "$@" </dev/null
    local rc=$?
    buildah rm "$ctr" >/dev/null 2>&1
    buildah_ctr=""
    return $rc
  else
    args=()
    for e in "${envs[@]}"; do args+=(-e "$e"); done
    docker run --rm --network host --read-only "${args[@]}" \
      -v "$work/secrets:/run/secrets:ro" -v "$work/etc:/etc/apple-auth-proxy:ro" \
      "$image" "$@"
  fi
}

asc_env=("APP_STORE_CONNECT_API_KEY_KEY_ID=$kid" "APP_STORE_CONNECT_API_KEY_ISSUER_ID=$issuer"
         "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH=/run/secrets/AuthKey_$kid.p8")

begin "apple-auth-proxy check in environment-only mode"
run_once "${asc_env[@]}" -- apple-auth-proxy check >"$work/check.out" 2>&1 ||
  { cat "$work/check.out" >&2; fail "apple-auth-proxy check exited non-zero"; }

begin "apple-auth-proxy token --decode in environment-only mode"
run_once "${asc_env[@]}" -- apple-auth-proxy token --decode >"$work/token.json" 2>"$work/token.err" ||
  { cat "$work/token.err" >&2; fail "apple-auth-proxy token --decode exited non-zero"; }
"$python" - "$work/token.json" "$kid" "$issuer" <<'EOF' || fail "the decoded token (printed above)"
import json, sys
text = open(sys.argv[1]).read()
try:
    dec = json.JSONDecoder()
    objs, i = [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        o, i = dec.raw_decode(text, i)
        objs.append(o)
    flat = {}
    for o in objs:
        flat.update(o)
        for v in o.values():
            if isinstance(v, dict):
                flat.update(v)
    assert flat.get("alg") == "ES256", "alg"
    assert flat.get("kid") == sys.argv[2], "kid"
    assert flat.get("iss") == sys.argv[3], "iss"
    assert flat.get("aud") == "appstoreconnect-v1", "aud"
except Exception as e:
    print("token --decode output not as expected (%s):\n%s" % (e, text), file=sys.stderr)
    sys.exit(1)
EOF

begin "starting apple-auth-proxy serve (mounted config) on 127.0.0.1:$proxy_port, admin 127.0.0.1:$admin_port"
serve_env=("APPLE_AUTH_PROXY_CONFIG=/etc/apple-auth-proxy/config.json"
           "APPLE_AUTH_PROXY_LISTEN=127.0.0.1:$proxy_port"
           "APPLE_AUTH_PROXY_ADMIN_LISTEN=127.0.0.1:$admin_port")
if [ "$builder" = buildah ]; then
  buildah_ctr=$(buildah from --pull=false --quiet "$image") || fail "buildah from $image"
  args=()
  for e in "${serve_env[@]}"; do args+=(--env "$e"); done
  setsid buildah run --isolation chroot --network host --user 10001:10001 "${args[@]}" \
    -v "$work/secrets:/run/secrets:ro" -v "$work/etc:/etc/apple-auth-proxy:ro" \
    "$buildah_ctr" -- apple-auth-proxy serve >"$work/proxy.out" 2>&1 </dev/null &
  proxy_pid=$!
  proxy_alive() { kill -0 "$proxy_pid" 2>/dev/null; }
  proxy_log() { cat "$work/proxy.out"; }
  healthcheck_in_container() {
    buildah run --isolation chroot --network host --user 10001:10001 \
      --env "APPLE_AUTH_PROXY_ADMIN_LISTEN=127.0.0.1:$admin_port" "$buildah_ctr" -- apple-auth-proxy health </dev/null
  }
else
  args=()
  for e in "${serve_env[@]}"; do args+=(-e "$e"); done
  docker_ctr=$(docker run -d --network host --read-only "${args[@]}" \
    -v "$work/secrets:/run/secrets:ro" -v "$work/etc:/etc/apple-auth-proxy:ro" "$image") ||
    fail "docker run"
  proxy_alive() { [ "$(docker inspect -f '{{.State.Running}}' "$docker_ctr" 2>/dev/null)" = true ]; }
  proxy_log() { docker logs "$docker_ctr" 2>&1; }
  healthcheck_in_container() { docker exec "$docker_ctr" apple-auth-proxy health; }
fi

begin "waiting for the proxy to listen"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
proxy_up=0
admin_up=0
for _ in $(seq 150); do
  if ! proxy_alive; then proxy_log >&2; fail "the proxy exited"; fi
  port_open "$proxy_port" && proxy_up=1
  port_open "$admin_port" && admin_up=1
  [ "$proxy_up$admin_up" = 11 ] && break
  sleep 0.2
done
if [ "$proxy_up" != 1 ]; then
  proxy_log >&2
  fail "nothing listens on 127.0.0.1:$proxy_port after 30 s (APPLE_AUTH_PROXY_LISTEN ignored?)"
fi
if [ "$admin_up" != 1 ]; then
  proxy_log >&2
  fail "nothing listens on 127.0.0.1:$admin_port after 30 s (APPLE_AUTH_PROXY_ADMIN_LISTEN ignored?)"
fi

begin "GET /healthz on the admin port"
code=$(curl -sS --noproxy '*' -m 5 -o "$work/healthz.out" -w '%{http_code}' "http://127.0.0.1:$admin_port/healthz") ||
  fail "curl http://127.0.0.1:$admin_port/healthz"
[ "$code" = 200 ] || { cat "$work/healthz.out" >&2; fail "/healthz answered $code, not 200"; }

begin "GET /readyz on the admin port"
code=$(curl -sS --noproxy '*' -m 5 -o "$work/readyz.out" -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz") ||
  fail "curl http://127.0.0.1:$admin_port/readyz"
[ "$code" = 200 ] || { cat "$work/readyz.out" >&2; fail "/readyz answered $code, not 200"; }

begin "the image's HEALTHCHECK command (apple-auth-proxy health)"
healthcheck_in_container >"$work/healthcheck.out" 2>&1 ||
  { cat "$work/healthcheck.out" >&2; fail "apple-auth-proxy health exited non-zero"; }

begin "GET /v1/apps through the proxy to the stand-in"
code=$(curl -sS --noproxy '*' -m 20 -o "$work/apps.json" -w '%{http_code}' "http://127.0.0.1:$proxy_port/v1/apps") ||
  { proxy_log >&2; fail "curl http://127.0.0.1:$proxy_port/v1/apps"; }
[ "$code" = 200 ] || { cat "$work/apps.json" >&2; echo >&2; proxy_log >&2; fail "/v1/apps answered $code, not 200"; }

begin "the stand-in verified the proxy's token"
"$python" - "$work/standin.jsonl" "$kid" "$issuer" <<'EOF' || fail "the stand-in's log (printed above)"
import json, sys
log, kid, issuer = sys.argv[1:4]
reqs = [e for e in map(json.loads, open(log)) if e.get("event") == "request"]
if not reqs:
    sys.exit("the stand-in logged no request")
r = reqs[-1]
problems = []
if r.get("host") != "api.appstoreconnect.apple.com":
    problems.append("host %r" % r.get("host"))
if r.get("path") != "/v1/apps":
    problems.append("path %r" % r.get("path"))
if r.get("token_ok") is not True:
    problems.append("token not accepted: %r" % r.get("token_error"))
if (r.get("token_header") or {}).get("kid") != kid:
    problems.append("kid %r" % (r.get("token_header") or {}).get("kid"))
if (r.get("token_claims") or {}).get("iss") != issuer:
    problems.append("iss %r" % (r.get("token_claims") or {}).get("iss"))
if problems:
    print(json.dumps(r, indent=1), file=sys.stderr)
    sys.exit("; ".join(problems))
EOF

begin "the proxy's output holds no token or key material"
proxy_log >"$work/proxy.log.txt"
if grep -Eq 'eyJ[A-Za-z0-9_-]{10,}\.|BEGIN (EC )?PRIVATE KEY' "$work/proxy.log.txt"; then
  fail "the proxy's output contains a token or a key"
fi

# ---- the image's own defaults -------------------------------------------------------------------

# The serve test above moved the listeners to 127.0.0.1 (the container shares the host's network
# there). Here the image runs exactly as shipped (0.0.0.0:8080, admin 0.0.0.0:9901, anonymous
# clients allowed, environment-only mode) where 0.0.0.0 reaches nothing but the container's own
# loopback: a private network namespace (buildah), or --network none (docker).
begin "serve with the image's defaults, in a private network namespace"
if [ "$builder" = buildah ]; then
  ctr=$(buildah from --pull=false --quiet "$image") || fail "buildah from $image"
  buildah_ctrs+=("$ctr")
  # The script is an argument, not standard input, which buildah run would read.
  defaults_script=$(cat <<'EOS'
set -u
ctr=$1 work=$2
shift 2
envs=()
for e in "$@"; do envs+=(--env "$e"); done
ip link set lo up || { echo "cannot bring up lo in the private network namespace"; exit 1; }
setsid buildah run --isolation chroot --network host --user 10001:10001 "${envs[@]}" \
  -v "$work/secrets:/run/secrets:ro" "$ctr" -- apple-auth-proxy serve \
  >"$work/defaults-proxy.out" 2>&1 </dev/null &
pid=$!
stop() {
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
trap stop EXIT
trap 'exit 143' TERM INT
up=0
for _ in $(seq 150); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the proxy exited:"; cat "$work/defaults-proxy.out"; exit 1
  fi
  if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/9901) 2>/dev/null; then
    up=1; break
  fi
  sleep 0.2
done
if [ "$up" != 1 ]; then
  echo "nothing listens on 8080 and 9901 after 30 s:"; cat "$work/defaults-proxy.out"; exit 1
fi
for path in /healthz /readyz; do
  code=$(curl -sS --noproxy '*' -m 5 -o "$work/defaults$(basename "$path").out" -w '%{http_code}' \
    "http://127.0.0.1:9901$path") || { echo "curl $path failed"; exit 1; }
  [ "$code" = 200 ] || { echo "$path answered $code:"; cat "$work/defaults$(basename "$path").out"; exit 1; }
done
buildah run --isolation chroot --network host --user 10001:10001 "$ctr" -- apple-auth-proxy health </dev/null ||
  { echo "apple-auth-proxy health (no arguments) failed"; exit 1; }
buildah run --isolation chroot --network host --user 10001:10001 "$ctr" -- apple-auth-proxy health --ready </dev/null ||
  { echo "apple-auth-proxy health --ready failed"; exit 1; }
grep -q 'listening on 0.0.0.0:8080' "$work/defaults-proxy.out" ||
  { echo "no 'listening on 0.0.0.0:8080' in the output:"; cat "$work/defaults-proxy.out"; exit 1; }
echo "defaults: ok"
EOS
)
  timeout -k 5 120 unshare --net bash -c "$defaults_script" smoke-defaults "$ctr" "$work" "${asc_env[@]}" \
    >"$work/defaults.log" 2>&1 </dev/null || { cat "$work/defaults.log" >&2; fail "the image's defaults (above)"; }
  grep -q '^defaults: ok$' "$work/defaults.log" || { cat "$work/defaults.log" >&2; fail "the defaults script stopped early"; }
  buildah rm "$ctr" >/dev/null 2>&1
else
  args=()
  for e in "${asc_env[@]}"; do args+=(-e "$e"); done
  ctr=$(docker run -d --network none --read-only "${args[@]}" -v "$work/secrets:/run/secrets:ro" "$image") ||
    fail "docker run --network none"
  docker_ctrs+=("$ctr")
  ok=0
  for _ in $(seq 150); do
    [ "$(docker inspect -f '{{.State.Running}}' "$ctr" 2>/dev/null)" = true ] ||
      { docker logs "$ctr" >&2; fail "the container exited"; }
    if docker exec "$ctr" apple-auth-proxy health >/dev/null 2>&1 &&
       docker logs "$ctr" 2>&1 | grep -q 'listening on 0.0.0.0:8080'; then
      ok=1; break
    fi
    sleep 0.2
  done
  [ "$ok" = 1 ] || { docker logs "$ctr" >&2; fail "no /healthz and port 8080 after 30 s"; }
  docker exec "$ctr" apple-auth-proxy health --admin 127.0.0.1:9901 --ready ||
    { docker logs "$ctr" >&2; fail "/readyz"; }
  docker logs "$ctr" 2>&1 | grep -q 'listening on 0.0.0.0:8080' ||
    { docker logs "$ctr" >&2; fail "no 'listening on 0.0.0.0:8080' in the output"; }
  docker rm -f "$ctr" >/dev/null 2>&1
fi

step="done"
