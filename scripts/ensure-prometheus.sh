#!/usr/bin/env bash
# Make sure a Prometheus server binary is there, for the e2e test that scrapes devmesh's
# /metrics with the real thing (tests/e2e/test_metrics.py). Debian's `prometheus` package;
# only the binary is used: the test runs it as its own process on 127.0.0.1 with a temp dir
# (the package's own service, if the package starts one, is stopped and disabled here).
set -euo pipefail

log() { printf 'ensure-prometheus: %s\n' "$*" >&2; }

if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no prometheus binary, and cannot install it here (not root, or no apt-get):"
    log "install Debian's 'prometheus' package (or put a prometheus binary on PATH)"
    exit 1
fi
log "installing Debian's prometheus package"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package's postinst must not start a server of its own.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
command -v prometheus >/dev/null 2>&1 || { log "the package installed no prometheus binary"; exit 1; }
log "$(prometheus --version 2>&1 | head -n 1)"
