#!/usr/bin/env bash
# base-image.sh: makes sure buildah's storage holds localhost/debian:bookworm-slim, a Debian 12
# root made with debootstrap from the machine's Debian mirror and shaped like Docker Hub's
# debian:bookworm-slim, for the places that build or run containers without a Docker engine:
# docker/smoke.sh (the image's build stage) and .ci/fresh-machine.sh (a fresh machine).
#
#   bash docker/base-image.sh          (as root; prints the image name when it is ready)
#
# The image is kept and reused; it is remade when older than AAP_BASE_MAX_AGE_DAYS (default
# 30), or always with AAP_BASE_REFRESH=1 (AAP_SMOKE_REFRESH_BASE=1 and
# AAP_SMOKE_BASE_MAX_AGE_DAYS are read too). AAP_BASE_MIRROR (or AAP_SMOKE_MIRROR) names the
# mirror; the default is the URIs: line of /etc/apt/sources.list.d/debian.sources. Concurrent
# callers wait for each other (a lock in /run), so the image is made once.
set -euo pipefail

base_image=localhost/debian:bookworm-slim
base_max_age_days=${AAP_BASE_MAX_AGE_DAYS:-${AAP_SMOKE_BASE_MAX_AGE_DAYS:-30}}
refresh=${AAP_BASE_REFRESH:-${AAP_SMOKE_REFRESH_BASE:-0}}

say() { printf 'base-image: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root (buildah and debootstrap need it)"; exit 1; }
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  # With recommends: debootstrap verifies the archive with gnupg and debian-archive-keyring.
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
      apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null; } ||
    { say "cannot install ${missing[*]}"; exit 1; }
fi

exec 9>/run/apple-auth-proxy-base-image.lock
flock 9

work=""
trap 'if [ -n "$work" ]; then rm -rf "$work"; fi' EXIT

debian_mirror() {
  local m=${AAP_BASE_MIRROR:-${AAP_SMOKE_MIRROR:-}}
  [ -n "$m" ] || m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

security_mirror() {
  local m
  m=$(awk '/^URIs:/ {n++; if (n == 2) {print $2; exit}}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian-security}"
}

base_is_fresh() {
  buildah inspect --type image "$base_image" >/dev/null 2>&1 || return 1
  [ "$refresh" = 1 ] && return 1
  local created now
  created=$(buildah inspect --type image --format '{{.OCIv1.Created.Unix}}' "$base_image" 2>/dev/null || echo 0)
  now=$(date +%s)
  [ $((now - created)) -lt $((base_max_age_days * 86400)) ]
}

make_base_image() {
  local mirror rootfs ctr mnt
  mirror=$(debian_mirror)
  rootfs="$work/rootfs"
  say "debootstrap --variant=minbase bookworm from $mirror (a minute or two)"
  debootstrap --variant=minbase --components=main bookworm "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; return 1; }
  # Shape it like Docker Hub's debian:bookworm-slim: deb822 sources with updates and security,
  # no documentation or locales installed by later packages, no apt caches, an empty /dev.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOS
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $(security_mirror)
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOS'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOS
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOS'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOS
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/* "$rootfs"/tmp/*
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr") || { buildah rm "$ctr" >/dev/null; return 1; }
  if ! tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -; then
    buildah umount "$ctr" >/dev/null; buildah rm "$ctr" >/dev/null; return 1
  fi
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --os linux --arch "$(dpkg --print-architecture)" "$ctr"
  buildah commit --quiet --rm "$ctr" "$base_image" >/dev/null
  rm -rf "$rootfs"
}

if base_is_fresh; then
  say "using the cached $base_image"
else
  old_base_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$base_image" 2>/dev/null || true)
  work=$(mktemp -d /var/tmp/aap-base.XXXXXX)
  make_base_image || { say "debootstrap/import of $base_image failed"; exit 1; }
  # The replaced image goes once nothing is built on it any more (buildah refuses until then).
  [ -n "$old_base_id" ] && { buildah rmi "$old_base_id" >/dev/null 2>&1 || true; }
fi
echo "$base_image"
