"""How the publisher judges a device in a rollout step: only on the modules of the version in that
step, and a device that went offline after receiving it is not healthy."""

from __future__ import annotations

from datetime import UTC, datetime

from modules.device_state import DeploymentState, DeviceInfo, ModuleState, ReportedState
from publisher._status import stage_of
from tests.deployment._factories import document, manifest, modelfleet_module

OLD = "sha256:" + "0a" * 32
NEW = "sha256:" + "0b" * 32
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _doc(version: int, modules: dict[str, str]):  # type: ignore[no-untyped-def]
    content = manifest(
        {name: modelfleet_module(f"modules/{name}", digest) for name, digest in modules.items()}
    )
    return document(name="iris-prod", version=version, content=content)


def _report(version: int, outcome: str, modules: list[ModuleState]) -> ReportedState:
    return ReportedState(
        device_id="d1",
        fleet="factory",
        seq=1,
        at=AT,
        device=DeviceInfo(agent_version="0", python="3.11", platform="linux", cpu_count=2),
        deployments={"iris-prod": DeploymentState(name="iris-prod", version=version, outcome=outcome, at=AT)},
        modules={m.name: m for m in modules},
    )


def _module(name: str, digest: str, status: str, error: str | None = None) -> ModuleState:
    return ModuleState(name=name, deployment="iris-prod", digest=digest, status=status, last_error=error)


def test_a_stale_failed_entry_of_an_earlier_version_does_not_fail_the_next() -> None:
    v2 = _doc(2, {"iris": NEW})
    report = _report(
        2,
        "applied",
        [_module("iris", NEW, "running"), _module("helper", OLD, "failed", "init() raised in version 1")],
    )
    assert stage_of(v2, report, online=True) == ("healthy", None)


def test_the_old_version_serving_during_the_update_is_not_the_new_one_being_healthy() -> None:
    v2 = _doc(2, {"iris": NEW})
    report = _report(2, "applying", [_module("iris", OLD, "running")])
    assert stage_of(v2, report, online=True)[0] == "pending"


def test_a_device_offline_after_receiving_the_step_is_not_healthy() -> None:
    v2 = _doc(2, {"iris": NEW})
    had_it = _report(2, "applied", [_module("iris", NEW, "running")])
    stage, reason = stage_of(v2, had_it, online=False)
    assert stage == "failed" and "went offline" in (reason or "")
    never_had_it = _report(1, "applied", [_module("iris", OLD, "running")])
    assert stage_of(v2, never_had_it, online=False) == ("offline", None)
