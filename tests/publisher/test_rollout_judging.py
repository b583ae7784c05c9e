"""How the publisher judges a device in a rollout step: only on the modules of the version in that
step, and a device that went offline after receiving it is not healthy."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

from modules.deployment import in_rollout
from modules.device_state import DeploymentState, DeviceInfo, ModuleState, Presence, ReportedState
from publisher._hub import FleetSnapshot
from publisher._rollout import ProgressDisplay, _converge, _judge
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


# -- deploy --wait: 0 of 0 devices is not done; the summary is said once --------------------------


class _Hub:
    """What the watcher reads of a `FleetConnection`: its snapshot, and change notifications."""

    def __init__(self, reports: list[ReportedState]) -> None:
        self.snapshot = FleetSnapshot(
            reports={r.device_id: r for r in reports},
            presence={r.device_id: Presence(device_id=r.device_id, online=True, at=AT) for r in reports},
        )

    async def wait_changed(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.01))


def _device(
    device_id: str, site: str, version: int, outcome: str, modules: list[ModuleState]
) -> ReportedState:
    return _report(version, outcome, modules).model_copy(
        update={"device_id": device_id, "tags": {"site": site}}
    )


async def test_restoring_to_no_targeted_device_is_not_converged_but_a_healthy_device_is() -> None:
    doc = _doc(3, {"iris": NEW})  # targets site plant-1
    elsewhere = _Hub([_device("d1", "plant-2", 3, "not-targeted", [])])
    assert await _converge(elsewhere, doc, 0.1) is False  # type: ignore[arg-type]
    nobody = _Hub([])
    assert await _converge(nobody, doc, 0.1) is False  # type: ignore[arg-type]
    healthy = _Hub([_device("d1", "plant-1", 3, "applied", [_module("iris", NEW, "running")])])
    assert await _converge(healthy, doc, 0.1) is True  # type: ignore[arg-type]


def test_a_step_is_not_done_while_no_device_is_targeted_but_an_empty_slice_of_a_real_fleet_is() -> None:
    doc = _doc(1, {"iris": NEW})
    assert _judge(doc, _Hub([])).done is False  # type: ignore[arg-type]
    assert _judge(doc, _Hub([_device("d1", "plant-2", 0, "applied", [])])).done is False  # type: ignore[arg-type]
    content = manifest({"iris": modelfleet_module("modules/iris", NEW)})
    staged = document(name="iris-prod", version=1, content=content, rollout={"steps": [1, 100]})
    outside = [d for d in (f"dev-{i}" for i in range(40)) if not in_rollout(staged.name, d, 1)][:3]
    fleet = _Hub([_device(d, "plant-1", 0, "applied", []) for d in outside])
    verdict = _judge(staged, fleet)  # type: ignore[arg-type]
    assert not any(d.in_step for d in verdict.devices) and verdict.done is True


def test_the_final_summary_is_shown_once_when_the_caller_prints_it_itself() -> None:
    shown, quiet = io.StringIO(), io.StringIO()
    ProgressDisplay(shown).summary("iris version 3: 20 devices healthy")
    ProgressDisplay(quiet, final_summary=False).summary("iris version 3: 20 devices healthy")
    assert shown.getvalue() == "iris version 3: 20 devices healthy\n"
    assert quiet.getvalue() == ""


def test_a_step_whose_failures_stay_within_the_allowed_ratio_is_done_once_the_rest_is_healthy() -> None:
    doc = _doc(1, {"iris": NEW})
    healthy = [
        _device(f"d{i}", "plant-1", 1, "applied", [_module("iris", NEW, "running")]) for i in range(19)
    ]
    failed = _device("d19", "plant-1", 1, "failed", [_module("iris", NEW, "failed", "init() raised")])
    starting = _device("d20", "plant-1", 1, "applying", [])
    verdict = _judge(doc, _Hub([*healthy, failed]))  # type: ignore[arg-type]
    assert verdict.done is True and verdict.failed == ["d19"] and verdict.ratio == 0.05
    assert _judge(doc, _Hub([*healthy, failed, starting])).done is False  # type: ignore[arg-type]
