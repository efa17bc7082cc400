"""The simulated remote engine's port forwarder (scripts/remote-engine.sh starts it).

Docker Desktop makes every port a container publishes answer on the host's 127.0.0.1. This
does the same for the engine in a container: it follows the engine's events and, for each
running container's published TCP ports, asks slirp4netns (its API socket) to forward
127.0.0.1:PORT on the host to PORT inside the engine; it drops the forward when the
container stops. Forwards bind 127.0.0.1 only, never a wider address.

    python scripts/remote_engine_ports.py tcp://127.0.0.1:PORT /tmp/dm-remote-NAME/slirp.sock
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

import docker
import docker.errors


def slirp(api: str, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        answer: dict[str, Any] = json.loads(s.makefile().read())
        return answer


def published(container: dict[str, Any]) -> set[int]:
    """The host ports a running container publishes on 127.0.0.1 or on every address."""
    ports = ((container.get("NetworkSettings") or {}).get("Ports")) or {}
    found = set()
    for key, bindings in ports.items():
        if not key.endswith("/tcp") or not bindings:
            continue
        for b in bindings:
            if b.get("HostIp") in ("", "0.0.0.0", "127.0.0.1") and b.get("HostPort"):
                found.add(int(b["HostPort"]))
    return found


class Forwarder:
    def __init__(self, client: docker.APIClient, api: str) -> None:
        self.client = client
        self.api = api
        self.by_container: dict[str, dict[int, int]] = {}  # id -> host port -> slirp id

    def add(self, cid: str) -> None:
        try:
            attrs = self.client.inspect_container(cid)
        except docker.errors.NotFound:
            return
        if not attrs["State"]["Running"]:
            return
        have = self.by_container.setdefault(cid, {})
        for port in sorted(published(attrs) - set(have)):
            answer = slirp(
                self.api,
                {
                    "execute": "add_hostfwd",
                    "arguments": {
                        "proto": "tcp",
                        "host_addr": "127.0.0.1",
                        "host_port": port,
                        "guest_port": port,
                    },
                },
            )
            if "return" in answer and "id" in answer["return"]:
                have[port] = int(answer["return"]["id"])
                print(f"forward 127.0.0.1:{port} ({cid[:12]})", flush=True)
            else:
                print(f"cannot forward 127.0.0.1:{port} ({cid[:12]}): {answer}", flush=True)

    def remove(self, cid: str) -> None:
        for port, fid in self.by_container.pop(cid, {}).items():
            slirp(self.api, {"execute": "remove_hostfwd", "arguments": {"id": fid}})
            print(f"unforward 127.0.0.1:{port} ({cid[:12]})", flush=True)

    def resync(self) -> None:
        running = {c["Id"] for c in self.client.containers()}
        for cid in set(self.by_container) - running:
            self.remove(cid)
        for cid in running:
            self.add(cid)


def main() -> int:
    base_url, api = sys.argv[1], sys.argv[2]
    while True:
        try:
            client = docker.APIClient(base_url=base_url, version="auto", timeout=None)
            forwarder = Forwarder(client, api)
            since = int(time.time())
            forwarder.resync()
            for event in client.events(decode=True, since=since, filters={"type": "container"}):
                action = event.get("Action") or event.get("status")
                if action == "start":
                    forwarder.add(event["id"])
                elif action == "die":  # a kill or a destroy is followed by, or follows, a die
                    forwarder.remove(event["id"])
        except (docker.errors.DockerException, OSError) as exc:
            print(f"engine stream broke ({exc}); again in 1 s", flush=True)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
