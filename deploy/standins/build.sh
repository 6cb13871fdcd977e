#!/usr/bin/env bash
# Local stand-ins for the public base images, for a Docker engine that reaches no image registry
# (only Debian's and PyPI's package registries). For each image the compose proof needs:
# use it if it is already local, else try one `docker pull`, else build a stand-in from Debian
# packages under the rabbitmesh-standin/ prefix. Prints the variables that point the Dockerfile
# (PYTHON_IMAGE) and the compose files (RABBITMQ_IMAGE, HAPROXY_IMAGE, CURL_IMAGE) at the result,
# one NAME=value a line, for `docker compose --env-file` or `export $(...)`.
#
#   deploy/standins/build.sh > /tmp/images.env
#
# The Debian base is a debootstrap of bookworm, the release python:3.11-slim is built on, with
# Debian's Python 3.11 (python3.11, python3-venv, python3-pip, python-is-python3). How the
# stand-ins differ from the official images: docs/operations.md, "Stand-in images".
# Needs root (debootstrap), docker and debootstrap (apt-get install debootstrap).
set -euo pipefail
cd "$(dirname "$0")"

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PREFIX=rabbitmesh-standin
WORK=${STANDIN_WORKDIR:-/var/tmp/rabbitmesh-standin}

log() { echo "standins: $*" >&2; }

have() { docker image inspect "$1" >/dev/null 2>&1; }

# Official image if it is here or can be pulled within a short time; "" otherwise.
official() {
  if have "$1"; then echo "$1"; return; fi
  if [ -z "${STANDIN_NO_PULL:-}" ] && timeout 60 docker pull -q "$1" >/dev/null 2>&1; then
    echo "$1"; return
  fi
  echo ""
}

build_base() {
  local tag=$PREFIX/python:3.11-slim
  if have "$tag"; then echo "$tag"; return; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local root=$WORK/rootfs
  if [ ! -x "$root/usr/bin/python3.11" ]; then
    rm -rf "$root" && mkdir -p "$WORK"
    log "debootstrap $SUITE from $MIRROR (a few minutes)"
    debootstrap --variant=minbase \
      --include=python3.11,python3.11-venv,python3-pip,python-is-python3,ca-certificates \
      "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  fi
  # What debian:bookworm-slim (python:3.11-slim's base) also has: no service starts during
  # apt-get install in a build, the security suite, no package lists or docs kept.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
  cat > "$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
  # A TLS-inspecting egress proxy (as on the machines this was proven on) signs PyPI's
  # certificate with a local CA: trust the CAs the build host added, as the host itself does.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
  log "docker import $tag"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' \
    - "$tag" >/dev/null
  echo "$tag"
}

build_from_base() {  # name dir base
  local tag=$PREFIX/$1
  if ! have "$tag"; then
    log "docker build $tag (Debian packages)"
    docker build -q --build-arg "BASE_IMAGE=$3" -t "$tag" "$2" >/dev/null
  fi
  echo "$tag"
}

python_image=$(official python:3.11-slim)
rabbitmq_image=$(official rabbitmq:3.13-management)
haproxy_image=$(official haproxy:2.9)
curl_image=$(official curlimages/curl:8.8.0)
if [ -z "$python_image$rabbitmq_image$haproxy_image$curl_image" ] \
   || [ -z "$python_image" ] || [ -z "$rabbitmq_image" ] || [ -z "$haproxy_image" ] || [ -z "$curl_image" ]; then
  base=$(build_base)
  python_image=${python_image:-$base}
  rabbitmq_image=${rabbitmq_image:-$(build_from_base rabbitmq:3-management rabbitmq "$base")}
  haproxy_image=${haproxy_image:-$(build_from_base haproxy:2 haproxy "$base")}
  curl_image=${curl_image:-$(build_from_base curl:latest curl "$base")}
fi
echo "PYTHON_IMAGE=$python_image"
echo "RABBITMQ_IMAGE=$rabbitmq_image"
echo "HAPROXY_IMAGE=$haproxy_image"
echo "CURL_IMAGE=$curl_image"
