"""Rolling replace, pure (plan/roll.py): which replicas get a new pod, and when the old one
leaves the endpoints, drains and goes. Table-driven where the cases are alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from devmesh.core.load import load_path
from devmesh.core.model import Mesh
from devmesh.plan.desired import Desired, Inputs, desired
from devmesh.plan.plan import Observed, plan
from devmesh.plan.roll import (
    DRAIN,
    bump,
    generations,
    retire,
    spare_generations,
    spares,
    to_roll,
)

ROOT = Path(__file__).resolve().parents[2]
SHOP = load_path(str(ROOT / "examples" / "shop" / "devmesh.yaml"))
V1 = ("catalog", "v1", 0)
ALL_SLOTS = {
    (s.name, v.name, r) for s in SHOP.services for v in s.versions for r in range(v.replicas)
}


def _inputs(gens: dict[tuple[str, str, int], int] | None = None, tag: str = "") -> Inputs:
    images = {(s.name, v.name): f"sha256:{s.name}{tag}" for s in SHOP.services for v in s.versions}
    return Inputs(
        project="t",
        state_dir="/state/t",
        envoy_image="sha256:envoy",
        pause_image="sha256:pause",
        app_images=images,
        proxy_user="1000:1000",
        generations=gens or {},
    )


def _running(want: Desired, state: str = "running") -> list[Observed]:
    out = []
    for pod in want.pods:
        for spec in pod.containers:
            out.append(
                Observed(
                    id=f"id-{spec.name}",
                    name=spec.name,
                    role=spec.role,
                    pod=pod.name,
                    service=pod.service,
                    version=pod.version,
                    config_hash=spec.config_hash,
                    state=state,
                    replica=pod.replica,
                    generation=pod.generation,
                )
            )
    return out


def _with_env(mesh: Mesh, service: str, version: str, key: str, value: str) -> Mesh:
    svc = mesh.service(service)
    versions = tuple(
        dataclasses.replace(v, env=(*v.env, (key, value))) if v.name == version else v
        for v in svc.versions
    )
    services = tuple(
        dataclasses.replace(s, versions=versions) if s.name == service else s for s in mesh.services
    )
    return dataclasses.replace(mesh, services=services)


def test_a_pod_of_a_later_generation_has_its_own_name_and_label() -> None:
    first = desired(SHOP, _inputs())
    second = desired(SHOP, _inputs({V1: 1}))
    old = next(p for p in first.pods if p.slot == V1)
    new = next(p for p in second.pods if p.slot == V1)
    assert (old.name, new.name) == ("t-catalog-v1-0", "t-catalog-v1-0-g1")
    assert new.generation == 1 and new.app.name == "t-catalog-v1-0-g1-app"
    assert dict(new.app.labels)["dev.devmesh.generation"] == "1"
    assert "dev.devmesh.generation" not in dict(old.app.labels)  # first pods keep their hash
    others = {p.name for p in first.pods if p.slot != V1}
    assert others == {p.name for p in second.pods if p.slot != V1}


def test_generations_are_the_newest_seen_per_replica() -> None:
    actual = _running(desired(SHOP, _inputs())) + _running(desired(SHOP, _inputs({V1: 3})))
    gens = generations(actual)
    assert gens[V1] == 3 and gens[("catalog", "v2", 1)] == 0


@pytest.mark.parametrize(
    ("change", "rolled"),
    [
        pytest.param(lambda m: (m, ""), set(), id="nothing-changed"),
        pytest.param(lambda m: (_with_env(m, "catalog", "v1", "X", "1"), ""), {V1}, id="env"),
        pytest.param(
            lambda m: (m, "-new"),
            ALL_SLOTS,
            id="image-of-every-version",
        ),
    ],
)
def test_a_changed_running_pod_is_rolled_not_recreated(change: object, rolled: set[object]) -> None:
    before = desired(SHOP, _inputs())
    mesh, tag = change(SHOP)  # type: ignore[operator]
    want = desired(mesh, _inputs(tag=tag))
    assert to_roll(want, _running(before)) == rolled


def test_a_restart_rolls_an_unchanged_pod() -> None:
    want = desired(SHOP, _inputs())
    assert to_roll(want, _running(want), forced={V1}) == {V1}


def test_a_pod_whose_owner_is_not_running_is_replaced_in_place_not_rolled() -> None:
    before = desired(SHOP, _inputs())
    want = desired(_with_env(SHOP, "catalog", "v1", "X", "1"), _inputs())
    assert to_roll(want, _running(before, state="exited")) == frozenset()


def test_the_roll_creates_the_new_pod_and_keeps_the_old_one_serving_until_it_is_ready() -> None:
    before = desired(SHOP, _inputs())
    actual = _running(before)
    mesh = _with_env(SHOP, "catalog", "v1", "X", "1")
    want = desired(mesh, _inputs(bump(generations(actual), {V1})))
    ready = frozenset(p.name for p in before.pods)  # all old pods serve; the new is not up
    kept = retire(want, actual, ready, {}, now=100.0)
    assert [(r.name, r.serving) for r in kept] == [("t-catalog-v1-0", True)]
    todo = plan(want, actual, keep=frozenset(r.name for r in kept))
    assert [p.name for p in todo.create_pods] == ["t-catalog-v1-0-g1"]
    assert not todo.remove and not todo.replace and not todo.replace_pods


def _mid_roll() -> tuple[Desired, list[Observed]]:
    """catalog/v1 replica 0 at generation 1 created beside generation 0."""
    before = desired(SHOP, _inputs())
    want = desired(_with_env(SHOP, "catalog", "v1", "X", "1"), _inputs({V1: 1}))
    actual = _running(before) + _running(
        dataclasses.replace(want, pods=tuple(p for p in want.pods if p.slot == V1))
    )
    return want, actual


def test_once_the_new_pod_serves_the_old_one_drains_then_goes() -> None:
    want, actual = _mid_roll()
    ready = frozenset(p.name for p in want.pods) | {"t-catalog-v1-0"}
    kept = retire(want, actual, ready, {}, now=100.0)
    assert [(r.name, r.until) for r in kept] == [("t-catalog-v1-0", 100.0 + DRAIN)]
    assert not kept[0].serving
    draining = {r.name: r.until for r in kept if r.until is not None}
    # Still draining a moment later: kept (plan removes nothing of it)
    kept = retire(want, actual, ready, draining, now=100.0 + DRAIN / 2)
    assert [r.name for r in kept] == ["t-catalog-v1-0"]
    assert not plan(want, actual, keep=frozenset(r.name for r in kept)).remove
    # Drained: no longer kept, so plan removes its three containers.
    kept = retire(want, actual, ready, draining, now=100.0 + DRAIN)
    assert kept == ()
    gone = set(plan(want, actual, keep=frozenset()).remove)
    assert gone == {f"id-t-catalog-v1-0{s}" for s in ("", "-app", "-sidecar")}


def test_a_new_pod_that_never_gets_ready_leaves_the_old_one_serving() -> None:
    want, actual = _mid_roll()
    ready = frozenset(p.name for p in want.pods if p.slot != V1) | {"t-catalog-v1-0"}
    for now in (100.0, 1000.0, 10000.0):
        kept = retire(want, actual, ready, {}, now=now)
        assert [(r.name, r.serving) for r in kept] == [("t-catalog-v1-0", True)]


def test_a_failed_attempt_beside_a_serving_pod_goes_when_the_next_edit_rolls_again() -> None:
    want, actual = _mid_roll()  # generation 1 never got ready; an edit asks for 2
    want2 = desired(_with_env(SHOP, "catalog", "v1", "X", "2"), _inputs({V1: 2}))
    ready = frozenset(p.name for p in want.pods if p.slot != V1) | {"t-catalog-v1-0"}
    kept = retire(want2, actual, ready, {}, now=100.0)
    assert [(r.name, r.serving) for r in kept] == [("t-catalog-v1-0", True)]


def test_an_old_pod_that_serves_nothing_is_not_drained_once_the_new_one_serves() -> None:
    want, actual = _mid_roll()
    ready = frozenset(p.name for p in want.pods)  # the old one is unhealthy
    assert retire(want, actual, ready, {}, now=100.0) == ()


def test_a_scaled_down_replica_drains_before_it_goes() -> None:
    before = desired(SHOP, _inputs())
    actual = _running(before)
    catalog = SHOP.service("catalog")
    versions = tuple(
        dataclasses.replace(v, replicas=1) if v.name == "v2" else v for v in catalog.versions
    )
    mesh = dataclasses.replace(
        SHOP,
        services=tuple(
            dataclasses.replace(s, versions=versions) if s.name == "catalog" else s
            for s in SHOP.services
        ),
    )
    want = desired(mesh, _inputs())
    ready = frozenset(p.name for p in before.pods)
    kept = retire(want, actual, ready, {}, now=5.0)
    assert [(r.name, r.until) for r in kept] == [("t-catalog-v2-1", 5.0 + DRAIN)]


def test_a_pass_over_a_finished_roll_plans_nothing() -> None:
    want = desired(_with_env(SHOP, "catalog", "v1", "X", "1"), _inputs({V1: 1}))
    actual = _running(want)
    assert to_roll(want, actual) == frozenset()
    assert generations(actual)[V1] == 1
    assert retire(want, actual, frozenset(), {}, now=1.0) == ()
    assert plan(dataclasses.replace(want, gateway=None), actual).empty  # (no gateway here)


# -- spares: pods made ahead of a rebuild, without their app --------------------------------

V1_KEY = ("catalog", "v1")


def _without_app(observed: list[Observed]) -> list[Observed]:
    return [o for o in observed if o.role != "app"]


def _pod_at(gen: int) -> list[Observed]:
    """catalog/v1's pod at generation `gen`, running, as observed."""
    want = desired(SHOP, _inputs({V1: gen}))
    return [o for o in _running(want) if (o.service, o.version) == V1_KEY]


@pytest.mark.parametrize(
    ("pods", "versions", "expected"),
    [
        pytest.param(_pod_at(0), {V1_KEY}, set(), id="a-pod-with-its-app-is-no-spare"),
        pytest.param(
            _pod_at(0) + _without_app(_pod_at(1)),
            {V1_KEY},
            {"t-catalog-v1-0-g1"},
            id="newer-without-app-is-the-spare",
        ),
        pytest.param(
            _pod_at(0) + _without_app(_pod_at(1)),
            set(),
            set(),
            id="only-of-the-versions-asked",
        ),
        pytest.param(
            _without_app(_pod_at(0)) + _pod_at(1),
            {V1_KEY},
            set(),
            id="older-than-the-pod-with-an-app-is-no-spare",
        ),
        pytest.param(
            [o for o in _pod_at(0) if o.role == "app"] + _without_app(_pod_at(1))[1:],
            {V1_KEY},
            set(),
            id="no-namespace-owner-no-spare",
        ),
    ],
)
def test_a_spare_is_a_newer_pod_without_its_app_of_a_version_asked(
    pods: list[Observed], versions: set[tuple[str, str]], expected: set[str]
) -> None:
    assert spares(pods, versions) == expected


def test_a_replica_gets_a_spare_of_the_next_generation_once_its_pod_serves() -> None:
    want = desired(SHOP, _inputs({V1: 3}))
    pod = next(p for p in want.pods if p.slot == V1)
    assert spare_generations(want, frozenset(), frozenset(), {V1_KEY}) == {}  # not ready yet
    assert spare_generations(want, frozenset({pod.name}), frozenset(), {V1_KEY}) == {V1: 4}
    # An existing spare is kept while its pod is out of the endpoints.
    have = frozenset({"t-catalog-v1-0-g4"})
    assert spare_generations(want, frozenset(), have, {V1_KEY}) == {V1: 4}
    assert spare_generations(want, frozenset({pod.name}), frozenset(), set()) == {}


def test_a_version_that_cannot_run_gets_no_spare() -> None:
    want = dataclasses.replace(desired(SHOP, _inputs()), failed={V1_KEY: "build failed"})
    names = frozenset(p.name for p in want.pods)
    assert spare_generations(want, names, frozenset(), {V1_KEY}) == {}


def test_a_roll_takes_the_spare_and_plan_adds_only_its_app() -> None:
    want = desired(SHOP, _inputs())
    spare_pod = next(p for p in desired(SHOP, _inputs({V1: 1})).pods if p.slot == V1)
    running = _running(want) + _without_app(
        [o for o in _running(desired(SHOP, _inputs({V1: 1}))) if o.pod == spare_pod.name]
    )
    # While the pod serves, the spare is kept as it is: nothing to do.
    kept = plan(want, running, spares=(spare_pod,))
    assert kept.describe() == ["create t-gateway"]  # the gateway is not in `running`
    # A new image: the roll asks for generation 1, the spare's; only the app is made.
    rolled = desired(SHOP, _inputs({V1: 1}, tag="-new"))
    base = [o for o in running if o.pod not in spares(running, {V1_KEY})]
    assert to_roll(desired(SHOP, _inputs(tag="-new")), base) >= {V1}
    assert generations(base)[V1] == 0  # the spare is not counted: bump gives it
    todo = plan(rolled, running, keep=frozenset({"t-catalog-v1-0"}))
    assert [c.name for c in todo.create] == ["t-catalog-v1-0-g1-app", "t-gateway"]
    assert not todo.create_pods and not todo.replace_pods
    assert not [c for c, _ in todo.replace if c.name.startswith("t-catalog-v1-0-g1")]


def test_plan_makes_a_missing_spare_and_removes_one_that_differs() -> None:
    want = desired(SHOP, _inputs())
    spare_pod = next(p for p in desired(SHOP, _inputs({V1: 1})).pods if p.slot == V1)
    made = plan(want, _running(want), spares=(spare_pod,))
    assert made.spares == (spare_pod,) and not made.remove
    assert "make spare t-catalog-v1-0-g1" in made.describe()
    # A spare of another spec (its sidecar's config changed): removed, made again later.
    stale = [
        dataclasses.replace(o, config_hash="old") if o.role == "sidecar" else o
        for o in _without_app(_running(desired(SHOP, _inputs({V1: 1}))))
        if o.pod == spare_pod.name
    ]
    todo = plan(want, _running(want) + stale, spares=(spare_pod,))
    assert set(todo.remove) == {o.id for o in stale} and not todo.spares
    # No longer asked for: removed.
    fresh = _without_app(
        [o for o in _running(desired(SHOP, _inputs({V1: 1}))) if o.pod == spare_pod.name]
    )
    gone = plan(want, _running(want) + fresh)
    assert set(gone.remove) == {o.id for o in fresh}
