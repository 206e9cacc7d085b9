#!/usr/bin/python3
"""token_bench: ES256 App Store Connect tokens per second, the proxy's C code beside PyJWT.

Runs build/tests/bench/bench_token (token_mint in a loop, then token cache hits), then times
PyJWT (Debian's python3-jwt over python3-cryptography) encoding an equivalent header and
payload for the same duration, and prints both figures and their ratio. Keys are generated on
the spot; nothing is read from disk.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY_ID = "2X9R4HXF34"
ISSUER = "69a6de95-023f-47e3-e053-5b8c7c11a4d1"


def find_bench_token(binary):
    """bench_token sits in the build tree next to the proxy binary: BUILD/tests/bench/."""
    candidates = []
    for base in (os.getcwd(), ROOT):
        build_dir = os.path.dirname(os.path.join(base, binary))
        candidates.append(os.path.join(build_dir, "tests", "bench", "bench_token"))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    sys.exit("token_bench: bench_token not found (looked at %s); run `make build` first"
             % ", ".join(sorted(set(candidates))))


def run_c(bench, seconds):
    out = subprocess.run([bench, "--seconds", str(seconds)], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    signed = re.search(r"tokens signed per second \(in-process\): (\d+)", out)
    hits = re.search(r"token cache hits per second \(in-process\): (\d+)", out)
    if not signed or not hits:
        sys.exit("token_bench: unexpected bench_token output:\n" + out)
    return int(signed.group(1)), int(hits.group(1))


def run_pyjwt(seconds):
    try:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as e:
        sys.exit("token_bench: %s (install Debian's python3-jwt and python3-cryptography)" % e)
    # A key object, not PEM text: PyJWT would otherwise parse the key on every call, which the
    # proxy does not do either.
    key = ec.generate_private_key(ec.SECP256R1())
    headers = {"kid": KEY_ID, "typ": "JWT"}
    n = 0
    start = time.monotonic()
    while True:
        for _ in range(64):
            now = int(time.time())
            payload = {"iss": ISSUER, "iat": now - 60, "exp": now + 1080,
                       "aud": "appstoreconnect-v1"}
            jwt.encode(payload, key, algorithm="ES256", headers=headers)
            n += 1
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
    return n / elapsed, getattr(jwt, "__version__", "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="build/apple-auth-proxy",
                    help="the proxy binary; bench_token is found in the same build tree")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    ap.add_argument("--json", action="store_true",
                    help="print the figures as one JSON object instead of a table (bench.py)")
    args = ap.parse_args()

    bench = find_bench_token(args.binary)
    c_rate, hit_rate = run_c(bench, args.seconds)
    py_rate, py_version = run_pyjwt(args.seconds)
    if args.json:
        print(json.dumps({"c_signs_per_s": c_rate, "c_cache_hits_per_s": hit_rate,
                          "pyjwt_signs_per_s": py_rate, "pyjwt_version": py_version,
                          "ratio": c_rate / py_rate if py_rate else None}))
        return 0

    rows = [
        ("apple-auth-proxy token_mint (C, OpenSSL)", "%d" % c_rate),
        ("PyJWT %s jwt.encode ES256 (Python)" % py_version, "%d" % py_rate),
        ("ratio C / PyJWT", "%.1fx" % (c_rate / py_rate if py_rate else float("inf"))),
        ("apple-auth-proxy token cache hits (C)", "%d" % hit_rate),
    ]
    width = max(len(r[0]) for r in rows)
    print("%-*s  %14s" % (width, "ES256 App Store Connect tokens, one core", "per second"))
    print("-" * (width + 16))
    for name, value in rows:
        print("%-*s  %14s" % (width, name, value))
    print()
    print("Each signed token is one ES256 signature over an equivalent header and claims. The proxy")
    print("signs once per token lifetime and serves cache hits in between, so requests never wait")
    print("for a signature.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
