#!/usr/bin/env bash
# Builds the platform's local images from Debian packages (no registry is needed or used):
#   faas/busybox:latest                  BusyBox (Debian's busybox-static) and nothing else
#   faas/bookworm-python3.11-node18:latest  Debian bookworm (debootstrap minbase) with python3 (also as
#                                           `python`) and nodejs
# Root filesystems are cached as tarballs in $FAAS_CACHE/images, so a second run is quick;
# an image already in the Docker daemon at the current revision is left alone.
# FAAS_REBUILD_IMAGES=1 builds again.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUSYBOX_IMAGE=faas/busybox:latest
DEBIAN_IMAGE=faas/bookworm-python3.11-node18:latest
CACHE="$FAAS_CACHE/images"
mkdir -p "$CACHE"

# What an image built by this script is at now; an older one (or one without the label) is
# imported again from its cached rootfs (2: `python` next to `python3` in the Debian image;
# 3: login shells without forks in the Debian image; 4: a statically linked bash in it).
IMAGE_REVISION=4
have_image() {
  [ -z "${FAAS_REBUILD_IMAGES:-}" ] &&
    [ "$(docker image inspect -f '{{index .Config.Labels "faas.image-revision"}}' "$1" 2>/dev/null)" = "$IMAGE_REVISION" ]
}

build_busybox() {
  have_image "$BUSYBOX_IMAGE" && return 0
  ensure_packages busybox-static
  local tar="$CACHE/busybox-rootfs.tar"
  if [ ! -s "$tar" ] || [ -n "${FAAS_REBUILD_IMAGES:-}" ]; then
    log "building the busybox rootfs"
    local root; root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,run,var/tmp,home}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
      [ "$applet" = bin/busybox ] && continue
      mkdir -p "$root/$(dirname "$applet")"
      ln -sf /bin/busybox "$root/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  fi
  log "importing $BUSYBOX_IMAGE"
  docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c "LABEL faas.image-revision=$IMAGE_REVISION" \
    -c 'CMD ["/bin/sh"]' -m "busybox-static from Debian" "$tar" "$BUSYBOX_IMAGE" >/dev/null
}

build_debian() {
  have_image "$DEBIAN_IMAGE" && return 0
  local tar="$CACHE/bookworm-python-node-rootfs.tar"
  if [ ! -s "$tar" ] || [ -n "${FAAS_REBUILD_IMAGES:-}" ]; then
    ensure_packages debootstrap
    log "debootstrap bookworm with python3 and nodejs (a few minutes, once)"
    local root; root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    as_root debootstrap --variant=minbase --include=python3,nodejs,ca-certificates bookworm "$root" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  fi
  # `python` as well as `python3`, as in the images people know (a rootfs cached before this
  # gets the link appended).
  if ! tar -tf "$tar" ./usr/bin/python >/dev/null 2>&1; then
    local extra; extra=$(mktemp -d)
    mkdir -p "$extra/usr/bin" && ln -s python3 "$extra/usr/bin/python"
    tar -C "$extra" --numeric-owner --owner=0 --group=0 -rf "$tar" ./usr/bin/python
    rm -rf "$extra"
  fi
  # A login shell (`bash -l -c`, what the e2b SDKs run every command with) without the two
  # programs Debian's profiles run each time: `id -u` (bash knows $EUID) and `mesg n` (only
  # meaningful on a terminal). About 3 ms less per command.
  if ! tar -xOf "$tar" ./root/.profile 2>/dev/null | grep -q '^\[ -t 0 \] && mesg n' ||
    [ "$(tar -tf "$tar" ./root/.profile | wc -l)" != 1 ]; then
    local tweak; tweak=$(mktemp -d)
    tar -C "$tweak" -xf "$tar" ./etc/profile ./root/.profile
    sed -i 's/"$(id -u)"/"${EUID:-$(id -u)}"/g' "$tweak/etc/profile"
    sed -i 's/^mesg n .*/[ -t 0 ] \&\& mesg n 2>\/dev\/null || true/' "$tweak/root/.profile"
    # In place: docker import refuses a path twice.
    tar --delete -f "$tar" ./etc/profile ./root/.profile
    tar -C "$tweak" --numeric-owner --owner=0 --group=0 -rf "$tar" ./etc/profile ./root/.profile
    rm -rf "$tweak"
  fi
  # /bin/bash is Debian's bash-static (the same GNU bash, linked statically; also kept as
  # /bin/bash-static): no dynamic loading at each start, 0.4 to 0.6 ms less per `bash -c` here,
  # which is every e2b command. The package comes from the host's apt (bookworm, like the image).
  if ! tar -tf "$tar" ./usr/bin/bash-static >/dev/null 2>&1; then
    local deb; deb=$(mktemp -d)
    (cd "$deb" && apt-get download -q -o APT::Sandbox::User=root bash-static >/dev/null) || die "apt-get download bash-static failed"
    dpkg-deb -x "$deb"/bash-static_*.deb "$deb/x"
    mkdir -p "$deb/t/usr/bin"
    cp "$deb/x/bin/bash-static" "$deb/t/usr/bin/bash-static"
    cp "$deb/x/bin/bash-static" "$deb/t/usr/bin/bash"
    tar --delete -f "$tar" ./usr/bin/bash
    tar -C "$deb/t" --numeric-owner --owner=0 --group=0 -rf "$tar" ./usr/bin/bash ./usr/bin/bash-static
    rm -rf "$deb"
  fi
  log "importing $DEBIAN_IMAGE"
  docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c "LABEL faas.image-revision=$IMAGE_REVISION" -c 'CMD ["/bin/sh"]' \
    -m "Debian bookworm minbase + python3 (also as python) + nodejs" \
    "$tar" "$DEBIAN_IMAGE" >/dev/null
}

ensure_dockerd
case "${1:-all}" in
  busybox) build_busybox ;;
  debian) build_debian ;;
  all) build_busybox; build_debian ;;
  *) die "usage: $0 [busybox|debian|all]" ;;
esac
