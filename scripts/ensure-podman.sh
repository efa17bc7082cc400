#!/usr/bin/env bash
# A private Podman engine with a Docker-compatible API, for devmesh's tests on Podman.
#
#   scripts/ensure-podman.sh start   install podman when missing, start `podman system service`
#                                    on a private socket; prints DOCKER_HOST=unix://...
#   scripts/ensure-podman.sh stop    stop that service (by its PID) and nothing else
#   scripts/ensure-podman.sh env     print DOCKER_HOST=... and CONTAINERS_CONF=... for a shell
#   scripts/ensure-podman.sh load IMAGE...   copy images from the Docker engine into it
#                                    (`docker save | podman load`: there is no registry)
#
# Everything lives under DEVMESH_PODMAN_DIR (default /run/devmesh-podman): containers.conf,
# storage (its own --root/--runroot: Podman's default store is not touched), the socket, the
# service's PID and log. The Docker engine is never touched.
#
# Measured on Debian bookworm (podman 4.3): runc refuses Podman's default ulimits here ("error
# setting rlimit type 7: operation not permitted": the machine refuses to raise RLIMIT_NOFILE),
# so containers.conf sets `default_ulimits = []`; crun fails here ("cgroups in hybrid mode not
# supported"), so the runtime is runc.
set -euo pipefail

log() { printf 'ensure-podman: %s\n' "$*" >&2; }

DIR=${DEVMESH_PODMAN_DIR:-/run/devmesh-podman}
SOCK=$DIR/podman.sock
PIDFILE=$DIR/service.pid
CONF=$DIR/containers.conf
LOGFILE=$DIR/service.log

podman_args() {
    printf '%s\n' --root "$DIR/storage" --runroot "$DIR/runroot" --runtime runc \
        --cgroup-manager cgroupfs --events-backend file --tmpdir "$DIR/tmp"
}

install() {
    if command -v podman >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "podman is not installed, and cannot be installed here (not root, or no apt-get):"
        log "install it (Debian/Ubuntu: apt-get install podman; Fedora: dnf install podman)"
        exit 1
    fi
    log "installing Debian's podman package"
    export DEBIAN_FRONTEND=noninteractive
    # runc, not crun (see above); catatonit for `init: true`; uidmap and slirp4netns for rootless
    local pkgs=(podman runc catatonit uidmap slirp4netns)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
    command -v podman >/dev/null 2>&1 || { log "the package installed no podman binary"; exit 1; }
}

write_conf() {
    mkdir -p "$DIR" "$DIR/tmp"
    chmod 0711 "$DIR"
    cat >"$CONF" <<'EOF'
# devmesh's private Podman (scripts/ensure-podman.sh)
[containers]
# runc cannot raise RLIMIT_NOFILE/NPROC on this machine: keep the engine's own limits
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q podman "/proc/$pid/cmdline" 2>/dev/null \
        && { echo "$pid"; return 0; }
    return 1
}

answers() { curl -sf --max-time 5 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

start() {
    install
    write_conf
    if pid=$(running_pid) && answers; then
        echo "DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    rm -f "$SOCK"
    log "starting podman system service on $SOCK (log: $LOGFILE)"
    # --time=0: it serves until stopped (by default it exits after 5 s without a client)
    CONTAINERS_CONF=$CONF nohup podman $(podman_args) system service --time=0 "unix://$SOCK" \
        >"$LOGFILE" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 100); do
        if answers; then
            log "ready: podman $(CONTAINERS_CONF=$CONF podman $(podman_args) version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
            echo "DOCKER_HOST=unix://$SOCK"
            return 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            log "podman system service exited; last lines of $LOGFILE:"
            tail -n 20 "$LOGFILE" >&2
            exit 1
        fi
        sleep 0.2
    done
    log "podman system service did not answer within 20 s; see $LOGFILE"
    exit 1
}

stop() {
    local pid
    if pid=$(running_pid); then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        log "stopped podman system service (pid $pid)"
    fi
    rm -f "$PIDFILE" "$SOCK"
}

load() {
    install
    write_conf
    local image
    for image in "$@"; do
        docker image inspect "$image" >/dev/null 2>&1 || { log "no image $image in Docker"; exit 1; }
        docker save "$image" | CONTAINERS_CONF=$CONF podman $(podman_args) load -q >/dev/null
        log "loaded $image"
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    env) echo "DOCKER_HOST=unix://$SOCK"; echo "CONTAINERS_CONF=$CONF" ;;
    load) shift; load "$@" ;;
    podman) shift; write_conf; CONTAINERS_CONF=$CONF exec podman $(podman_args) "$@" ;;
    *) log "usage: $0 start|stop|env|load IMAGE...|podman ARGS..."; exit 2 ;;
esac
