#!/usr/bin/env bash
# The examples build FROM busybox:1.35. Where the engine lacks it and no registry answers
# (or DEVMESH_PULL=never), make it locally from Debian's busybox-static, labelled so that
# `make clean-images` can remove it.
set -euo pipefail
image=busybox:1.35
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
if [ "${DEVMESH_PULL:-missing}" != never ] && timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    exit 0
fi
busybox=$(command -v busybox || true)
if [ -z "$busybox" ]; then
    echo "make-base-image: no $image on the engine and no busybox to make it from" >&2
    echo "make-base-image: install busybox-static (apt-get install busybox-static)" >&2
    exit 1
fi
if ! "$busybox" --list | grep -qx nc; then
    echo "make-base-image: $busybox has no nc applet; install busybox-static" >&2
    exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
here=$(cd "$(dirname "$0")/.." && pwd)
cp "$here/devmesh/templates/base/Dockerfile" "$ctx/Dockerfile"
cp "$busybox" "$ctx/busybox"
DOCKER_BUILDKIT=0 docker build -q --label dev.devmesh.managed=1 --label dev.devmesh.role=image \
    -t "$image" "$ctx" >/dev/null
echo "make-base-image: made $image locally from $busybox" >&2
