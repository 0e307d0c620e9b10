#!/usr/bin/env bash
# The Dockerfile's base image (debian:bookworm-slim), made here where no image registry is
# reachable: debootstrap's minbase of Debian bookworm from the mirror this machine's apt uses,
# imported under the name the Dockerfile starts from.
#   base-image.sh ENGINE [NAME]      ENGINE: docker or podman; NAME: debian:bookworm-slim
# Needs root and debootstrap (apt-get install debootstrap). Does nothing if ENGINE has NAME.
set -euo pipefail
engine=${1:?usage: base-image.sh docker|podman [NAME]}
name=${2:-debian:bookworm-slim}
if "$engine" image inspect "$name" >/dev/null 2>&1; then exit 0; fi
if "$engine" pull -q "$name" >/dev/null 2>&1; then exit 0; fi
command -v debootstrap >/dev/null || { echo "No registry gives $name and debootstrap is missing (apt-get install debootstrap)."; exit 1; }
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
mirror=${mirror:-$(sed -n 's/^deb \(http[^ ]*debian\) bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "Making $name with debootstrap (bookworm, minbase) from $mirror ..."
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import --change 'CMD ["bash"]' - "$name" >/dev/null
rm -f "$root.log"
echo "$name imported into $engine"
