#!/usr/bin/env bash
# Make sure a Docker engine answers. Use the one there is; where none answers and we are root
# on Debian/Ubuntu, install docker.io and start dockerd (CI runs on such a fresh machine).
# Otherwise say exactly what is missing. Also installs busybox-static, which the local base
# image of the examples is made from, when it is missing and we can.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! [ -x /bin/busybox ] && ! command -v busybox >/dev/null 2>&1; then
    if can_apt; then apt_install busybox-static; else log "note: no busybox; examples need it to build their base image offline"; fi
fi

if engine_answers; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if can_apt; then
        apt_install docker.io
    else
        log "no Docker engine answers and dockerd is not installed."
        log "install Docker (https://docs.docker.com/engine/install/) or run this as root on Debian/Ubuntu."
        exit 1
    fi
fi

if [ "$(id -u)" != 0 ]; then
    log "dockerd is installed but no engine answers; start it (e.g. 'sudo systemctl start docker')"
    log "and make sure your user may use it (the 'docker' group)."
    exit 1
fi

# containerd first where the package split it out; dockerd starts its own otherwise.
logfile=/var/log/devmesh-dockerd.log
log "starting dockerd (log: $logfile)"
nohup dockerd >"$logfile" 2>&1 &
echo $! >/var/run/devmesh-dockerd.pid
for _ in $(seq 1 120); do
    if engine_answers; then
        log "engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
        exit 0
    fi
    if ! kill -0 "$(cat /var/run/devmesh-dockerd.pid)" 2>/dev/null; then
        log "dockerd exited; last lines of $logfile:"
        tail -n 20 "$logfile" >&2
        exit 1
    fi
    sleep 0.5
done
log "dockerd did not answer within 60 s; see $logfile"
exit 1
