#!/usr/bin/env bash
# A simulated remote Docker engine that behaves like Docker Desktop, for tests and benches.
#
#   scripts/remote-engine.sh start [NAME]   start one (prints `export DOCKER_HOST=...` lines)
#   scripts/remote-engine.sh env [NAME]     print its environment again
#   scripts/remote-engine.sh stop [NAME]    remove it and everything it made
#   scripts/remote-engine.sh load NAME IMAGE...   copy local images into it (docker save | load)
#
# What it is: dockerd, containerd, runc, docker-proxy and iptables from Debian's docker.io,
# copied with the libraries they link (ldd) into a FROM-scratch image (docker import; no
# registry), run as a privileged container on the shared engine with `--network none`, its
# own data root (a labelled volume) and its own cgroup namespace. slirp4netns, attached to
# that container's network namespace from the host, is its only link to the world, as
# rootless Docker does it:
#   - 10.0.2.2 inside is the host's loopback: dockerd runs with --host-gateway-ip 10.0.2.2, so
#     `extra_hosts: host.docker.internal:host-gateway` reaches the host's 127.0.0.1, like
#     Docker Desktop's host.docker.internal;
#   - the engine's API (tcp :2375 inside) is forwarded to 127.0.0.1:PORT on the host;
#   - every port a container publishes is forwarded to the same port on the host's 127.0.0.1
#     by a small watcher (scripts/remote_engine_ports.py: the engine's events -> slirp4netns'
#     add_hostfwd), as Desktop's port forwarder does. slirp delivers those connections to
#     10.0.2.100 inside; a DNAT rule (with route_localnet on tap0) hands them to docker-proxy
#     on 127.0.0.1, where ports published on 127.0.0.1 listen.
# So its filesystem is not the host's (bind mounts name paths inside it), the host has no
# route to its containers' addresses (its pools are inside the container's namespace only),
# and only published ports reach 127.0.0.1.
#
# Network rule: nothing inside may leave the machine. slirp4netns binds its outbound sockets
# to 127.0.0.1 (--outbound-addr) and has no DNS (--disable-dns); inside, iptables rejects
# anything leaving through tap0 that is not for 10.0.2.2 (the host's loopback).
#
# Cleanup: everything carries the label dev.devmesh.remote-engine=NAME (container, volume);
# slirp4netns and the watcher are ended by their PIDs (state in /tmp/dm-remote-NAME). The
# shared engine's configuration and the host's iptables are never touched: the engine's
# rules live in its own network namespace. The image (devmesh/remote-engine:HASH, labelled
# dev.devmesh.managed=1) is kept for the next start; `make clean-images` removes it.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
LABEL=dev.devmesh.remote-engine
POOL=${REMOTE_ENGINE_POOL:-10.213.0.0/16}  # inside its namespace only
BIP=${REMOTE_ENGINE_BIP:-10.212.0.1/24}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
# The shared engine: never the remote one, whatever DOCKER_HOST the caller has.
outer() { env -u DOCKER_HOST -u DOCKER_CONTEXT docker "$@"; }

die() { echo "remote-engine: $*" >&2; exit 1; }

binaries=(
    /usr/sbin/dockerd /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc
    /usr/sbin/docker-proxy /usr/sbin/xtables-nft-multi
)

image_tag() {
    # The binaries and this script decide the image: rebuilt only when one of them changes.
    {
        for b in "${binaries[@]}" "$(readlink -f /usr/bin/docker-init)" "$(command -v busybox)"; do
            stat -c '%n %s %Y' "$(readlink -f "$b")"
        done
        sed -n '/^entry_script() {/,/^}/p' "$0"
    } | sha256sum | cut -c1-12
}

entry_script() {
    cat <<'EOF'
#!/bin/sh
# PID 2 under docker-init. Waits for slirp4netns' tap0, fences it, then runs dockerd.
set -e
mkdir -p /tmp /run /var/run /etc
# Not --privileged (this machine withholds CAP_SYS_RESOURCE, which --privileged asks for):
# /sys and the cgroup hierarchies come read-only; mount them again, writable, for the
# engine's own containers (the cgroup namespace is private: its root is this container's).
mount -o remount,rw /sys
for d in /sys/fs/cgroup/*; do
    n=${d##*/}; o=$n; [ "$n" = systemd ] && o=none,name=systemd
    umount "$d" && mount -t cgroup -o "$o" cgroup "$d"
done
i=0
until ip -4 addr show tap0 2>/dev/null | grep -q 10.0.2.100; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { echo "no tap0 from slirp4netns" >&2; exit 1; }
    sleep 0.05
done
# Nothing leaves through slirp but to 10.0.2.2 (the host's loopback). DOCKER-USER is made
# before dockerd starts, which keeps its rules at the head of FORWARD.
iptables -N DOCKER-USER
iptables -A DOCKER-USER -o tap0 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
iptables -A DOCKER-USER -o tap0 ! -d 10.0.2.2 -j REJECT
iptables -A OUTPUT -o tap0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
iptables -A OUTPUT -o tap0 ! -d 10.0.2.2 -j REJECT
# The engine's API is for the host (through slirp) only, not for its own containers.
iptables -A INPUT -p tcp --dport 2375 ! -i tap0 -j REJECT
# Published ports: slirp delivers the host's 127.0.0.1:P to 10.0.2.100:P; docker-proxy
# listens on 127.0.0.1:P for ports published on 127.0.0.1. Hand them over.
echo 1 > /proc/sys/net/ipv4/conf/tap0/route_localnet
iptables -t nat -A PREROUTING -i tap0 -d 10.0.2.100 -p tcp ! --dport 2375 \
    -j DNAT --to-destination 127.0.0.1
exec dockerd -H tcp://10.0.2.100:2375 --tls=false \
    --host-gateway-ip 10.0.2.2 --bip "$BIP" --default-address-pool "base=$POOL,size=24" \
    --data-root /var/lib/docker --exec-root /run/docker --pidfile /run/docker.pid
EOF
}

build_image() {
    local tag=$1 root lib b
    root=$(mktemp -d /tmp/dm-remote-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,etc,tmp,run,proc,sys,dev,var/lib/docker}
    for b in "${binaries[@]}"; do cp -L "$b" "$root$b"; done
    cp -L /usr/bin/docker-init "$root/usr/bin/docker-init"
    cp -L "$(command -v busybox)" "$root/bin/busybox"
    for applet in sh ip grep sleep mkdir cat echo mount umount ls ps; do
        ln -s busybox "$root/bin/$applet"
    done
    for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
        ln -s xtables-nft-multi "$root/usr/sbin/$t"
    done
    # iptables' matches and targets are dlopen()ed: ldd does not see them.
    mkdir -p "$root/usr/lib/x86_64-linux-gnu/xtables"
    cp -L /usr/lib/x86_64-linux-gnu/xtables/*.so "$root/usr/lib/x86_64-linux-gnu/xtables/"
    for b in "${binaries[@]}" /usr/lib/x86_64-linux-gnu/xtables/*.so; do
        ldd "$b" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'
    done | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    entry_script >"$root/entry.sh"
    chmod 755 "$root/entry.sh"
    tar -C "$root" -c . | outer import \
        --change 'ENTRYPOINT ["/entry.sh"]' \
        --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'LABEL dev.devmesh.managed=1 dev.devmesh.role=image' \
        - "$tag" >/dev/null
    # Earlier builds of this image (other binaries or script): removed unless in use.
    outer images devmesh/remote-engine --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$tag" \
        | xargs -r env -u DOCKER_HOST docker rmi >/dev/null 2>&1 || true
}

state_dir() { echo "/tmp/dm-remote-$1"; }

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

slirp_api() {  # slirp_api SOCKET JSON
    "$PYTHON" - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode())
s.shutdown(socket.SHUT_WR)
print(s.makefile().read())
EOF
}

print_env() {
    local dir port
    dir=$(state_dir "$1")
    [ -f "$dir/port" ] || die "no remote engine named $1 (no $dir/port)"
    port=$(cat "$dir/port")
    echo "export DOCKER_HOST=tcp://127.0.0.1:$port"
    echo "export DEVMESH_TRANSPORT=tcp"
    echo "export REMOTE_ENGINE_NAME=$1"
}

reap_orphans() {
    local d owner
    for d in /tmp/dm-remote-*/; do
        [ -f "$d/owner" ] || continue
        owner=$(cat "$d/owner")
        if ! kill -0 "$owner" 2>/dev/null; then
            d=${d%/}
            echo "remote-engine: removing ${d#/tmp/dm-remote-}, whose owner (pid $owner) is gone" >&2
            stop "${d#/tmp/dm-remote-}"
        fi
    done
}

start() {
    local name=$1 dir tag port pid cid i
    [ "$(id -u)" = 0 ] || die "needs root (slirp4netns joins another network namespace)"
    if ! command -v slirp4netns >/dev/null && command -v apt-get >/dev/null; then
        echo "remote-engine: installing Debian's slirp4netns" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slirp4netns >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq slirp4netns >/dev/null; } || true
    fi
    command -v slirp4netns >/dev/null || die "needs slirp4netns (apt-get install slirp4netns)"
    dir=$(state_dir "$name")
    [ ! -e "$dir" ] || stop "$name"
    reap_orphans
    mkdir -p "$dir"
    # A test session or bench names itself the owner: should it die without stopping the
    # engine, the next start removes it (an engine started by hand has no owner).
    [ -z "${REMOTE_ENGINE_OWNER:-}" ] || echo "$REMOTE_ENGINE_OWNER" >"$dir/owner"
    tag=devmesh/remote-engine:$(image_tag)
    outer image inspect "$tag" >/dev/null 2>&1 || build_image "$tag"
    outer volume create --label "$LABEL=$name" "dm-remote-$name" >/dev/null
    # --privileged would ask for CAP_SYS_RESOURCE, which this machine withholds: every other
    # capability, no seccomp/AppArmor profile, unmasked /proc and all devices instead.
    cid=$(outer run -d --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
        --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
        --device-cgroup-rule 'a *:* rwm' --network none --cgroupns private --init \
        --name "dm-remote-$name" --label "$LABEL=$name" \
        `# no resolver: a name devmesh did not define never resolves (Docker warns)` \
        --dns 127.0.0.1 \
        -e BIP="$BIP" -e POOL="$POOL" \
        -v "dm-remote-$name:/var/lib/docker" "$tag" 2>"$dir/run.log") \
        || { cat "$dir/run.log" >&2; stop "$name"; die "the engine container did not start"; }
    echo "$cid" >"$dir/container"
    pid=$(outer inspect -f '{{.State.Pid}}' "$cid")
    slirp4netns --configure --mtu 65520 --disable-dns --outbound-addr 127.0.0.1 \
        --api-socket "$dir/slirp.sock" "$pid" tap0 >"$dir/slirp.log" 2>&1 &
    echo $! >"$dir/slirp.pid"
    for i in $(seq 100); do [ -S "$dir/slirp.sock" ] && break; sleep 0.05; done
    port=${REMOTE_ENGINE_PORT:-$(free_port)}
    slirp_api "$dir/slirp.sock" "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_addr\":\"127.0.0.1\",\"host_port\":$port,\"guest_port\":2375}}" >"$dir/api-forward.json"
    grep -q '"id"' "$dir/api-forward.json" || die "slirp4netns refused the API forward: $(cat "$dir/api-forward.json")"
    echo "$port" >"$dir/port"
    for i in $(seq 300); do
        if env DOCKER_HOST="tcp://127.0.0.1:$port" docker version >/dev/null 2>&1; then break; fi
        if [ "$(outer inspect -f '{{.State.Running}}' "$cid")" != true ]; then
            outer logs "$cid" >&2 || true
            stop "$name"
            die "the engine container exited"
        fi
        sleep 0.1
    done
    env DOCKER_HOST="tcp://127.0.0.1:$port" docker version >/dev/null 2>&1 \
        || { outer logs --tail 30 "$cid" >&2; stop "$name"; die "the engine did not answer in 30 s"; }
    "$PYTHON" "$HERE/scripts/remote_engine_ports.py" "tcp://127.0.0.1:$port" "$dir/slirp.sock" \
        >"$dir/ports.log" 2>&1 &
    echo $! >"$dir/ports.pid"
    print_env "$name"
}

load() {
    local name=$1 dir port
    shift
    dir=$(state_dir "$name")
    port=$(cat "$dir/port")
    outer save "$@" | env DOCKER_HOST="tcp://127.0.0.1:$port" docker load -q >/dev/null
}

kill_pidfile() {
    local f=$1 pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

stop() {
    local name=$1 dir
    dir=$(state_dir "$name")
    kill_pidfile "$dir/ports.pid"
    # Removing the container ends every process inside it: the inner containers live in
    # its PID namespace.
    outer ps -aq --filter "label=$LABEL=$name" | xargs -r env -u DOCKER_HOST docker rm -f >/dev/null
    kill_pidfile "$dir/slirp.pid"
    outer volume ls -q --filter "label=$LABEL=$name" | xargs -r env -u DOCKER_HOST docker volume rm -f >/dev/null
    rm -rf "$dir"
}

cmd=${1:-}
name=${2:-default}
case "$cmd" in
    start) start "$name" ;;
    stop) stop "$name" ;;
    env) print_env "$name" ;;
    load) shift 2; load "$name" "$@" ;;
    *) die "usage: $0 start|stop|env [NAME] | load NAME IMAGE..." ;;
esac
