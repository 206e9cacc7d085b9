#!/usr/bin/env bash
# rootfs.sh BINARY DIR: lays out in DIR the whole file system of the runtime image, which has no
# shell and no package manager to finish the job itself:
#
#   /usr/local/bin/apple-auth-proxy      the binary
#   the shared libraries it links        at the paths ldd resolves them to, with the dynamic
#                                        loader at the binary's PT_INTERP path
#   /usr/share/doc/PKG/copyright         the Debian copyright file of each package they come from
#   /etc/ssl/certs/ca-certificates.crt   the CA bundle (and OpenSSL's default name for it,
#                                        /usr/lib/ssl/cert.pem)
#   /etc/passwd, /etc/group              apple-auth-proxy, uid and gid 10001, and nothing else
#
# Run in the Dockerfile's build stage (Debian, with ca-certificates installed by .ci/deps.sh).
# Fails when ldd cannot resolve a library, so that a missing one stops the build.
set -euo pipefail

binary=${1:?usage: rootfs.sh BINARY DIR}
root=${2:?usage: rootfs.sh BINARY DIR}
uid=10001
bundle=/etc/ssl/certs/ca-certificates.crt

[ -x "$binary" ] || { echo "rootfs: $binary is not an executable" >&2; exit 1; }
[ -s "$bundle" ] || { echo "rootfs: no CA bundle at $bundle (ca-certificates)" >&2; exit 1; }
rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/usr/lib/ssl"
install -m 0755 "$binary" "$root/usr/local/bin/apple-auth-proxy"

# Each library as a regular file under the path the loader looks it up by (its soname); the
# loader itself under the absolute path written in the binary.
copy_file() {
  local src=$1 dst=$root$1
  mkdir -p "$(dirname "$dst")"
  cp -L --preserve=mode "$src" "$dst"
}
ldd_out=$(ldd "$binary")
if grep -q 'not found' <<<"$ldd_out"; then
  echo "rootfs: unresolved libraries:" >&2
  grep 'not found' <<<"$ldd_out" >&2
  exit 1
fi
libs=()
while read -r name arrow path _; do
  if [ "$arrow" = "=>" ] && [ -n "$path" ]; then
    libs+=("$path")
  elif [ "${name:0:1}" = / ]; then
    libs+=("$name")
  fi
done <<<"$ldd_out"
[ ${#libs[@]} -gt 0 ] || { echo "rootfs: ldd found no libraries (static binary?)" >&2; exit 1; }
for lib in "${libs[@]}"; do
  copy_file "$lib"
done

# The copyright files of the packages the libraries come from (their licences ask for them).
for lib in "${libs[@]}"; do
  real=$(readlink -f "$lib")
  dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
done | cut -d: -f1 | sort -u | while read -r pkg; do
  f=/usr/share/doc/$pkg/copyright
  [ -f "$f" ] && copy_file "$f"
done
copy_file "$bundle"
[ -f /usr/share/doc/ca-certificates/copyright ] && copy_file /usr/share/doc/ca-certificates/copyright
# OpenSSL's compiled-in default CA file (OPENSSLDIR/cert.pem), as on Debian.
ln -s "$bundle" "$root/usr/lib/ssl/cert.pem"

printf 'apple-auth-proxy:x:%d:%d:apple-auth-proxy:/nonexistent:/usr/sbin/nologin\n' "$uid" "$uid" \
  >"$root/etc/passwd"
printf 'apple-auth-proxy:x:%d:\n' "$uid" >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

echo "rootfs: $(find "$root" -type f | wc -l) files, $(du -sk "$root" | cut -f1) KiB in $root"
