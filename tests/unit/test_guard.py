"""The pods' firewall guard, pure: its rules, its container, and how plans treat it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from devmesh import labels
from devmesh.core.load import load_path
from devmesh.plan.desired import GUARD_RULES, Desired, Inputs, desired, guard_rules
from devmesh.plan.plan import Observed, plan

ROOT = Path(__file__).resolve().parents[2]
SHOP = load_path(str(ROOT / "examples" / "shop" / "devmesh.yaml"))


def _want(host: str | None = "172.30.0.1", guard_image: str = "sha256:guard") -> Desired:
    images = {(s.name, v.name): f"sha256:{s.name}" for s in SHOP.services for v in s.versions}
    inputs = Inputs(
        "t", "/state/t", "sha256:envoy", "sha256:pause", images, guard_image=guard_image, host=host
    )
    return desired(SHOP, inputs)


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("-A INPUT")]


@pytest.mark.parametrize(
    ("host", "host_rule"),
    [("172.30.0.1", ["-A INPUT -s 172.30.0.1/32 -j ACCEPT"]), (None, [])],
    ids=["host-known", "host-unknown"],
)
def test_only_the_sidecars_ports_loopback_replies_and_the_host_are_let_in(
    host: str | None, host_rule: list[str]
) -> None:
    text = guard_rules(host)
    assert text.startswith("*filter\n") and text.endswith("COMMIT\n")
    assert _rules(text) == [
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        *host_rule,
        "-A INPUT -p tcp -m tcp --dport 15000:15199 -j ACCEPT",
        "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A INPUT -p udp -j REJECT --reject-with icmp-port-unreachable",
    ]
    assert "*nat" not in text  # Docker's own NAT rules in the namespace are left alone


def test_every_pod_has_a_guard_with_net_admin_alone_in_its_namespace() -> None:
    for pod in _want().pods:
        guard = pod.guard
        assert guard.role == "guard" and guard.image == "sha256:guard"
        assert guard.network_mode == f"container:{pod.name}"
        assert guard.cap_drop == ("ALL",) and guard.cap_add == ("NET_ADMIN",)
        assert guard.read_only and guard.restart == "no"
        assert guard.command == ("iptables-restore", GUARD_RULES)
        (host_path, text), *_ = guard.files
        assert guard.binds == ((host_path, GUARD_RULES, "ro"),)
        assert text == guard_rules("172.30.0.1")
        assert dict(guard.labels)[labels.POD] == pod.name
        # nothing that stays in the pod may change the rules
        for kept in (pod.pause, pod.app, pod.sidecar):
            assert "NET_ADMIN" not in kept.cap_add


def test_new_guard_rules_make_new_pods_and_nothing_else() -> None:
    before, after = _want("172.30.0.1"), _want("172.31.0.1")
    for old, new in zip(before.pods, after.pods, strict=True):
        assert old.pause.config_hash != new.pause.config_hash  # a new namespace, guarded anew
        assert (old.app, old.sidecar) == (new.app, new.sidecar)
    assert before.gateway == after.gateway
    assert _want().pods == _want().pods  # the same rules: nothing changes


def _observed(want: Desired) -> list[Observed]:
    out = []
    for i, spec in enumerate(c for p in want.pods for c in p.containers):
        lab = dict(spec.labels)
        out.append(
            Observed(
                f"id{i}",
                spec.name,
                spec.role,
                lab[labels.POD],
                lab[labels.SERVICE],
                lab[labels.VERSION],
                spec.config_hash,
                "running",
            )
        )
    return out


def test_a_guard_left_behind_is_removed_and_its_pod_kept() -> None:
    want = dataclasses.replace(_want(), gateway=None)
    actual = _observed(want)
    assert plan(want, actual).empty
    pod = want.pods[0]
    leftover = Observed(
        "left", pod.guard.name, "guard", pod.name, pod.service, pod.version, "x", "exited"
    )
    todo = plan(want, [*actual, leftover])
    assert todo.remove == ("left",)
    assert not (todo.create_pods or todo.replace_pods or todo.create or todo.replace)
