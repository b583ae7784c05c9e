"""The planner alone: desired and actual in, commands out."""

from __future__ import annotations

from edge_agent._planner import ActualModule, DesiredModule, Remove, Replace, Start, desired_modules, plan
from modules.deployment import Manifest
from tests.deployment._factories import manifest, modelfleet_module

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _desired(name: str, digest: str = DIGEST_A, order: int = 1, **kw) -> DesiredModule:
    return DesiredModule(name=name, deployment="d", repository=f"modules/{name}", digest=digest, port=5001,
                         startup_order=order, **kw)  # fmt: skip


def _actual(d: DesiredModule) -> ActualModule:
    return ActualModule(d.name, d.fingerprint, d.digest, d.startup_order)


def test_same_desired_state_twice_plans_nothing() -> None:
    desired = {"a": _desired("a"), "b": _desired("b")}
    actual = {name: _actual(d) for name, d in desired.items()}
    assert plan(desired, actual) == []


def test_new_digest_is_a_replace_and_missing_module_is_a_start() -> None:
    old = _desired("a")
    new = _desired("a", DIGEST_B)
    commands = plan({"a": new, "b": _desired("b")}, {"a": _actual(old)})
    assert commands == [Replace(_actual(old), new), Start(_desired("b"))]


def test_removals_come_first_in_reverse_startup_order_then_starts_in_order() -> None:
    first, second, third = _desired("x", order=0), _desired("y", order=5), _desired("z", order=2)
    actual = {"old1": ActualModule("old1", "f", DIGEST_A, 1), "old9": ActualModule("old9", "f", DIGEST_A, 9)}
    commands = plan({"x": first, "y": second, "z": third}, actual)
    assert [type(c).__name__ for c in commands] == ["Remove", "Remove", "Start", "Start", "Start"]
    assert [c.actual.name for c in commands[:2]] == ["old9", "old1"]  # type: ignore[union-attr]
    assert [c.desired.name for c in commands[2:]] == ["x", "z", "y"]  # type: ignore[union-attr]


def test_stopped_status_removes_a_running_module() -> None:
    running = _desired("a")
    stopped = _desired("a", status="stopped")
    assert plan({"a": stopped}, {"a": _actual(running)}) == [Remove(_actual(running))]
    assert plan({"a": stopped}, {}) == []


def test_a_configuration_that_failed_is_not_retried_until_it_changes() -> None:
    old, bad = _desired("a"), _desired("a", DIGEST_B)
    assert plan({"a": bad}, {"a": _actual(old)}, failed={"a": bad.fingerprint}) == []
    fixed = _desired("a", DIGEST_B, env={"RETRY": "1"})
    assert plan({"a": fixed}, {"a": _actual(old)}, failed={"a": bad.fingerprint}) == [
        Replace(_actual(old), fixed)
    ]


def test_env_or_port_change_needs_a_new_process_but_deployment_name_does_not() -> None:
    base = _desired("a")
    assert base.fingerprint != _desired("a", env={"K": "v"}).fingerprint
    renamed = DesiredModule(**{**base.__dict__, "deployment": "other"})
    assert renamed.fingerprint == base.fingerprint


def test_desired_modules_reads_modelfleet_modules_and_reports_docker_ones() -> None:
    docker = {"type": "docker", "status": "running", "restartPolicy": "always", "version": "1.0",
              "settings": {"image": "example/tempsensor:1.0", "createOptions": "{}"}}  # fmt: skip
    m = Manifest.model_validate(manifest({"iris": modelfleet_module(digest=DIGEST_A), "sensor": docker}))
    desired, unsupported = desired_modules(m, {"iris": "prod"})
    assert list(desired) == ["iris"]
    d = desired["iris"]
    assert (d.digest, d.port, d.deployment, d.restart_policy) == (DIGEST_A, 5001, "prod", "on-unhealthy")
    assert d.env == {"LOG_LEVEL": "info"} and d.execution_providers == ("cuda", "cpu")
    assert [u.name for u in unsupported] == ["sensor"]
