#!/usr/bin/env bash
# The root file system of modelfleet's base image: Debian minbase with Debian's python3, trimmed.
#
#   scripts/build-base-image.sh ROOTFS
#
# `modelfleet image base` runs this, turns ROOTFS into one image layer and caches the result under
# a key made from this file's content: change anything here and the next build makes a new base.
# No image is pulled from anywhere; packages come from the Debian mirror (MODELFLEET_DEBIAN_MIRROR,
# default deb.debian.org). Needs root (debootstrap chroots) and the `debootstrap` package.
#
# What the scoring host needs from Debian: python3 (CPython 3.11 in bookworm: its packages in the
# image are this workstation's CPython 3.11 wheels), libstdc++ and libgcc (onnxruntime, in minbase
# already). Everything else (numpy, onnxruntime, aiohttp, ...) is in the image's own layers.
set -euo pipefail

rootfs="${1:?usage: build-base-image.sh ROOTFS}"
suite="${MODELFLEET_DEBIAN_SUITE:-bookworm}"
mirror="${MODELFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "$(id -u)" -ne 0 ]; then
  echo "build-base-image.sh: debootstrap needs root (run as root or with sudo)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "build-base-image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
fi
if [ -e "$rootfs" ] && [ -n "$(ls -A "$rootfs" 2>/dev/null)" ]; then
  echo "build-base-image.sh: $rootfs is not empty" >&2
  exit 1
fi

debootstrap --variant=minbase --include=python3 "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"

# Trim what a container never reads: docs, man pages, translations, apt's downloads and lists
# (`apt-get update` in a derived image fetches them again), logs, and the device nodes (the
# engine mounts its own /dev).
rm -rf \
  "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/lintian \
  "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/var/lib/dpkg/*-old \
  "$rootfs"/dev/*
find "$rootfs/var/log" -type f -delete
# Written by the engine at start; an empty machine-id tells systemd-aware tools to make one.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"

echo "rootfs: $(du -sh --apparent-size "$rootfs" | cut -f1) (python $(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'))"
