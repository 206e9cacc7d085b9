#!/usr/bin/python3
"""certs: test CA and good/bad server certificates for the Apple stand-in, made with `openssl`.

Everything is generated at test time into a directory of the caller's choosing (nothing here is
ever committed). Library use:

    from certs import make_certs
    paths = make_certs("/tmp/x")      # dict of name -> path (see CERT_KINDS and the keys below)

CLI:  /usr/bin/python3 tests/upstream/certs.py DIR   (prints the dict as JSON)

Keys of the returned dict:
  ca_cert, ca_key                 the test CA that tests trust (route "ca_file")
  other_ca_cert, other_ca_key     a second CA that nobody trusts
  <kind>_cert, <kind>_key         for each kind in CERT_KINDS:
    good         signed by the test CA, SAN = GOOD_NAMES + IP 127.0.0.1 (+ ::1)
    expired      signed by the test CA, good SAN, valid 2020-01-01 .. 2021-01-01
    not_yet_valid  signed by the test CA, good SAN, valid from 2099 on
    wrong_host   signed by the test CA, SAN DNS:wrong.example only
    self_signed  self-signed (not from any CA), good SAN
    cn_only      signed by the test CA, CN=api.appstoreconnect.apple.com, SAN DNS:other.example
    unknown_ca   signed by the second CA (other_ca), good SAN
    no_ip        signed by the test CA, the good DNS names but no IP address in the SAN
"""
import json
import os
import secrets
import subprocess
import sys

GOOD_NAMES = [
    "api.appstoreconnect.apple.com",
    "weatherkit.apple.com",
    "api.storekit.itunes.apple.com",
    "api.storekit-sandbox.itunes.apple.com",
    "api.enterprise.developer.apple.com",
    "api.music.apple.com",
    "api.push.apple.com",
    "api.sandbox.push.apple.com",
    "maps-api.apple.com",
    "account.apple.com",
    "api-business.apple.com",
    "api-school.apple.com",
    "api.devicecheck.apple.com",
    "api.development.devicecheck.apple.com",
    "localhost",
]
GOOD_IPS = ["127.0.0.1", "::1"]

CERT_KINDS = ["good", "expired", "not_yet_valid", "wrong_host", "self_signed", "cn_only",
              "unknown_ca", "no_ip"]

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ca]
default_ca = testca
[testca]
database = {db}
new_certs_dir = {newcerts}
serial = {serial}
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
"""

_LEAF_EXT = """\
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
{aki}subjectAltName = {san}
"""


def _run(args, cwd):
    p = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (" ".join(args), p.returncode,
                                                           p.stderr.strip()))
    return p.stdout


def _genkey(path, cwd):
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path], cwd)
    os.chmod(os.path.join(cwd, path), 0o600)


def _san(dns, ips=()):
    return ",".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])


def _make_ca(d, name, cn):
    key, cert = name + ".key", name + ".pem"
    _genkey(key, d)
    _run(["req", "-config", "openssl.cnf", "-x509", "-new", "-key", key, "-out", cert,
          "-subj", "/CN=" + cn, "-days", "3650", "-extensions", "v3_ca",
          "-set_serial", "0x" + secrets.token_hex(8)], d)
    return cert, key


def _leaf_ext_file(d, name, san, self_signed=False):
    path = name + ".ext"
    aki = "" if self_signed else "authorityKeyIdentifier = keyid,issuer\n"
    with open(os.path.join(d, path), "w") as f:
        f.write(_LEAF_EXT.format(san=san, aki=aki))
    return path


def _make_leaf(d, name, cn, san, ca=None, days=825, startdate=None, enddate=None):
    """A leaf signed by ca=(cert, key); startdate/enddate (YYYYMMDDHHMMSSZ) use `openssl ca`."""
    key, cert, csr = name + ".key", name + ".pem", name + ".csr"
    _genkey(key, d)
    ext = _leaf_ext_file(d, name, san, self_signed=ca is None)
    if ca is None:
        # `openssl req` (3.0) has no -extfile: one config holding both [req] and [leaf].
        cnf = name + ".cnf"
        with open(os.path.join(d, cnf), "w") as f:
            f.write(_OPENSSL_CNF.split("[v3_ca]")[0])
            with open(os.path.join(d, ext)) as e:
                f.write(e.read())
        _run(["req", "-config", cnf, "-x509", "-new", "-key", key, "-out", cert,
              "-subj", "/CN=" + cn, "-days", str(days), "-extensions", "leaf",
              "-set_serial", "0x" + secrets.token_hex(8)], d)
        return cert, key
    _run(["req", "-config", "openssl.cnf", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn], d)
    if startdate or enddate:
        _run(["ca", "-batch", "-config", "openssl.cnf", "-cert", ca[0], "-keyfile", ca[1],
              "-in", csr, "-out", cert, "-startdate", startdate, "-enddate", enddate,
              "-extfile", ext, "-extensions", "leaf", "-notext"], d)
    else:
        _run(["x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-out", cert,
              "-days", str(days), "-extfile", ext, "-extensions", "leaf", "-sha256",
              "-set_serial", "0x" + secrets.token_hex(8)], d)
    return cert, key


def make_certs(directory):
    """Creates the CA(s) and every leaf in directory (created if needed); returns absolute paths."""
    d = os.path.abspath(directory)
    os.makedirs(d, exist_ok=True)
    newcerts = os.path.join(d, "newcerts")
    os.makedirs(newcerts, exist_ok=True)
    with open(os.path.join(d, "index.txt"), "w"):
        pass
    with open(os.path.join(d, "serial"), "w") as f:
        f.write(secrets.token_hex(8).upper() + "\n")
    with open(os.path.join(d, "openssl.cnf"), "w") as f:
        f.write(_OPENSSL_CNF.format(db=os.path.join(d, "index.txt"), newcerts=newcerts,
                                    serial=os.path.join(d, "serial")))

    out = {}
    ca = _make_ca(d, "ca", "apple-auth-proxy test CA")
    other = _make_ca(d, "other_ca", "apple-auth-proxy unknown CA")
    out["ca_cert"], out["ca_key"] = ca
    out["other_ca_cert"], out["other_ca_key"] = other

    good_san = _san(GOOD_NAMES, GOOD_IPS)
    first = GOOD_NAMES[0]
    leaves = {
        "good": dict(cn=first, san=good_san, ca=ca),
        "expired": dict(cn=first, san=good_san, ca=ca,
                        startdate="20200101000000Z", enddate="20210101000000Z"),
        "not_yet_valid": dict(cn=first, san=good_san, ca=ca,
                              startdate="20990101000000Z", enddate="20991231000000Z"),
        "wrong_host": dict(cn="wrong.example", san=_san(["wrong.example"]), ca=ca),
        "self_signed": dict(cn=first, san=good_san, ca=None),
        "cn_only": dict(cn=first, san=_san(["other.example"]), ca=ca),
        "unknown_ca": dict(cn=first, san=good_san, ca=other),
        "no_ip": dict(cn=first, san=_san(GOOD_NAMES), ca=ca),
    }
    assert sorted(leaves) == sorted(CERT_KINDS)
    for kind, spec in leaves.items():
        cert, key = _make_leaf(d, kind, **spec)
        out[kind + "_cert"], out[kind + "_key"] = cert, key
    return {k: os.path.join(d, v) for k, v in out.items()}


def main(argv):
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: certs.py DIR\n")
        return 2
    print(json.dumps(make_certs(argv[1]), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
