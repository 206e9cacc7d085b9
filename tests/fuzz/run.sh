#!/usr/bin/env bash
# tests/fuzz/run.sh: build the libFuzzer targets with clang (ASan + UBSan), replay every
# committed regression and seed input, then fuzz each target for FUZZ_SECONDS (default 60).
# A crash, leak, timeout or out-of-memory input found by a run is copied into
# tests/fuzz/regressions/<target>/ (commit it with the fix) and the script exits 1.
#
#   tests/fuzz/run.sh                  build, replay, fuzz every target
#   tests/fuzz/run.sh --replay-only    build and replay regressions/ and corpus/ only (fast;
#                                      independent of CTest, suitable for every CI run)
#   tests/fuzz/run.sh fuzz_request     only the named target(s)
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_BUILD_DIR (default build-fuzz),
# FUZZ_CC (default clang), FUZZ_JOBS (parallel fuzzing processes per target, default 1),
# FUZZ_KEEP_GOING=1 (fork mode: keep fuzzing after a finding, to see past a known bug).
# The growing working corpus lives in $FUZZ_BUILD_DIR/fuzz-work/<target>/corpus and is kept
# between runs; the committed seeds in tests/fuzz/corpus/<target>/ are never modified.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FUZZ_DIR="$ROOT/tests/fuzz"
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
SECS=${FUZZ_SECONDS:-60}
CC_BIN=${FUZZ_CC:-clang}
JOBS=${FUZZ_JOBS:-1}
ALL_TARGETS=(fuzz_request fuzz_response fuzz_conf fuzz_key fuzz_h2_response fuzz_access_token
             fuzz_redis_reply fuzz_linkrw fuzz_conf_env)
SIGNATURE="invariant broken|ERROR: (Address|Leak)Sanitizer|runtime error"
SIGNATURE="$SIGNATURE|ERROR: libFuzzer: (timeout|out-of-memory)"

replay_only=0
targets=()
for a in "$@"; do
    case "$a" in
    --replay-only) replay_only=1 ;;
    -h | --help)
        sed -n '2,17p' "$0"
        exit 0
        ;;
    fuzz_*) targets+=("$a") ;;
    *)
        echo "run.sh: unknown argument $a" >&2
        exit 2
        ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

dict_for() {
    case "$1" in
    fuzz_request | fuzz_response | fuzz_h2_response) echo "$FUZZ_DIR/http.dict" ;;
    fuzz_conf) echo "$FUZZ_DIR/conf.dict" ;;
    fuzz_key) echo "$FUZZ_DIR/key.dict" ;;
    fuzz_access_token) echo "$FUZZ_DIR/access_token.dict" ;;
    fuzz_redis_reply) echo "$FUZZ_DIR/redis.dict" ;;
    fuzz_linkrw) echo "$FUZZ_DIR/linkrw.dict" ;;
    fuzz_conf_env) echo "$FUZZ_DIR/conf_env.dict" ;;
    esac
}

echo "== building the fuzz targets in $BUILD with $CC_BIN"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER="$CC_BIN" -DFUZZ=ON -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" --target "${targets[@]}" >/dev/null

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}"

status=0

# 1. Replay: every committed regression and seed runs once (libFuzzer runs file arguments once
#    each and stops at the first failure).
for t in "${targets[@]}"; do
    bin="$BUILD/tests/fuzz/$t"
    mapfile -t inputs < <(find "$FUZZ_DIR/regressions/$t" "$FUZZ_DIR/corpus/$t" -type f \
        ! -name '.*' 2>/dev/null | sort)
    if [ ${#inputs[@]} -eq 0 ]; then
        echo "== $t: nothing to replay"
        continue
    fi
    echo "== $t: replaying ${#inputs[@]} inputs"
    if ! "$bin" -runs=1 "${inputs[@]}" >"$BUILD/$t.replay.log" 2>&1; then
        echo "!! $t: a committed input fails; see $BUILD/$t.replay.log" >&2
        tail -40 "$BUILD/$t.replay.log" >&2
        status=1
    fi
done
if [ "$replay_only" = 1 ]; then
    [ "$status" = 0 ] && echo "== replay: all inputs pass"
    exit "$status"
fi

# Valid keys for fuzz_key, made fresh for this run (never committed).
key_seeds() {
    local dir=$1
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/gen-pkcs8.pem" \
        2>/dev/null
    openssl ec -in "$dir/gen-pkcs8.pem" -out "$dir/gen-sec1.pem" 2>/dev/null
    base64 -w0 "$dir/gen-pkcs8.pem" >"$dir/gen-pkcs8.b64"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$dir/gen-p384.pem" \
        2>/dev/null
}

# 2. Fuzz each target for SECS seconds.
for t in "${targets[@]}"; do
    bin="$BUILD/tests/fuzz/$t"
    work="$BUILD/fuzz-work/$t"
    mkdir -p "$work/corpus" "$work/artifacts"
    rm -f "$work/artifacts"/*
    [ "$t" = fuzz_key ] && key_seeds "$work/corpus"
    echo "== $t: fuzzing for ${SECS}s (corpus $work/corpus)"
    set +e
    if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
        "$bin" -max_total_time="$SECS" -dict="$(dict_for "$t")" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/artifacts/" -print_final_stats=1 -fork="$JOBS" \
            -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
            "$work/corpus" "$FUZZ_DIR/corpus/$t" >"$work/fuzz.log" 2>&1
    elif [ "$JOBS" -gt 1 ]; then
        "$bin" -max_total_time="$SECS" -dict="$(dict_for "$t")" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/artifacts/" -print_final_stats=1 -jobs="$JOBS" \
            -workers="$JOBS" "$work/corpus" "$FUZZ_DIR/corpus/$t" >"$work/fuzz.log" 2>&1
    else
        "$bin" -max_total_time="$SECS" -dict="$(dict_for "$t")" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
            "$work/corpus" "$FUZZ_DIR/corpus/$t" >"$work/fuzz.log" 2>&1
    fi
    rc=$?
    set -e
    { grep -E "^#[0-9]+.*(DONE|oom/timeout/crash)|stat::(number_of_executed_units|peak_rss_mb)" \
        "$work/fuzz.log" || true; } | tail -3 | sed "s/^/   $t: /"
    found=$(find "$work/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o \
        -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null | sort)
    if [ "$rc" != 0 ] || [ -n "$found" ]; then
        status=1
        mkdir -p "$FUZZ_DIR/regressions/$t"
        # One input per distinct failure (keep-going mode finds the same bug many times): the
        # signature is the first failure line with numbers and addresses removed.
        declare -A seen=()
        for f in "$FUZZ_DIR/regressions/$t"/*; do # already known: not copied again
            [ -f "$f" ] || continue
            sig=$("$bin" -runs=1 "$f" 2>&1 | grep -m1 -E "$SIGNATURE" |
                sed -E 's/0x[0-9a-f]+//g; s/[0-9]+//g' || true)
            [ -n "$sig" ] && seen[$sig]=1
        done
        for f in $found; do
            sig=$("$bin" -runs=1 "$f" 2>&1 | grep -m1 -E "$SIGNATURE" |
                sed -E 's/0x[0-9a-f]+//g; s/[0-9]+//g' || true)
            [ -n "${seen[$sig]+x}" ] && continue
            seen[$sig]=1
            cp "$f" "$FUZZ_DIR/regressions/$t/"
            echo "!! $t: $(basename "$f") -> tests/fuzz/regressions/$t/: ${sig:-failure}" >&2
        done
        unset seen
        echo "!! $t: exit status $rc; log: $work/fuzz.log" >&2
    fi
done

[ "$status" = 0 ] && echo "== fuzzing: no findings"
exit "$status"
