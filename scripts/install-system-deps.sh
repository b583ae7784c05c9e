#!/usr/bin/env bash
# The real services the tests run against: Mosquitto, the Distribution registry, skopeo, the
# Docker engine (docker.io: the tests start their own dockerd); debootstrap, which builds the
# module images' base; and iproute2 (ip, tc), with which the network-fault tests make their own hosts.
# Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail

declare -A wanted=(
  [mosquitto]=/usr/sbin/mosquitto
  [docker-registry]=/usr/bin/docker-registry
  [skopeo]=/usr/bin/skopeo
  [iproute2]=/usr/sbin/tc
  [docker.io]=/usr/sbin/dockerd
  [debootstrap]=/usr/sbin/debootstrap
  [util-linux]=/usr/bin/nsenter
)
missing=()
for pkg in "${!wanted[@]}"; do
  [ -x "${wanted[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${missing[*]} (install them with your package manager)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "missing system packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# apt starts some services on install; the tests start their own on free loopback ports.
for svc in mosquitto docker-registry docker containerd; do
  $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
