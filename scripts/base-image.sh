#!/usr/bin/env bash
# A Debian 12 base image made here, where no image registry is reachable (root; needs debootstrap):
#   base-image.sh NAME:TAG
# debootstrap (minbase, with python3 and its venv module, CA certificates, and redis-server: the same
# image serves compose's Redis) from the mirror apt uses on this machine, then `docker import`.
# Nothing is done if the image exists already. About a minute on a fresh machine.
set -euo pipefail
image=${1:?usage: base-image.sh NAME:TAG}
docker=/usr/bin/docker
[ -x "$docker" ] || docker=docker
if "$docker" image inspect "$image" >/dev/null 2>&1; then exit 0; fi

# the mirror of bookworm that apt uses here (one-line or deb822 sources), Debian's own otherwise
mirror=$(
    { grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '$3 == "bookworm" {print $2; exit}'
      grep -hs -A3 '^URIs:' /etc/apt/sources.list.d/*.sources \
        | awk '/^URIs:/ {uri=$2} /^Suites:.*(^| )bookworm( |$)/ {print uri; exit}'
    } | grep -v -- '-security' | head -1
)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/nodepilot-rootfs-XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,redis-server \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$docker" import - "$image" >/dev/null
