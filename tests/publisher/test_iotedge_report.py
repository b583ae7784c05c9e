"""`status --format iotedge`: a device's reported state as IoT Edge's `$edgeAgent` reported
properties, over synthetic reports (no broker), and the command line's wiring of it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modules import ConfigError
from modules.device_state import (
    DeploymentState,
    DeviceInfo,
    Download,
    ModuleState,
    Presence,
    ReportedState,
)
from publisher import _deploy_cli
from publisher._hub import FleetSnapshot
from publisher._iotedge_report import NEVER, edge_agent_reported, utc_time
from publisher.cli import build_parser

AT = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def report(modules: dict[str, ModuleState] | None = None, **deployments: DeploymentState) -> ReportedState:
    return ReportedState(
        device_id="dev-01",
        fleet="factory",
        at=AT,
        device=DeviceInfo(
            agent_version="0.1.0",
            platform="Linux 6.1.0 x86_64",
            python="3.11.9",
            execution_providers=["CPUExecutionProvider"],
        ),
        deployments=deployments,
        modules=modules or {},
    )


def applied(name: str = "iris", version: int = 3, outcome: str = "applied", reason: str | None = None):
    return DeploymentState(name=name, version=version, outcome=outcome, reason=reason, at=AT)  # type: ignore[arg-type]


def module(**changes: Any) -> ModuleState:
    fields: dict[str, Any] = {
        "name": "iris",
        "deployment": "iris",
        "module": "modules/iris-svc",
        "version": 2,
        "digest": DIGEST,
        "port": 5001,
        "status": "running",
        "health": "healthy",
        "started_at": AT - timedelta(minutes=5),
    }
    return ModuleState(**{**fields, **changes})


# -- the mapping ---------------------------------------------------------------------------------


def test_a_running_module_of_an_applied_deployment() -> None:
    out = edge_agent_reported(report({"iris": module()}, iris=applied()))
    assert list(out) == [
        "schemaVersion",
        "version",
        "lastDesiredStatus",
        "runtime",
        "systemModules",
        "modules",
    ]
    assert out["lastDesiredStatus"] == {"code": 200, "description": ""}
    assert out["runtime"]["platform"] == {"os": "linux", "architecture": "x86_64", "version": "0.1.0"}
    assert out["systemModules"]["edgeAgent"]["runtimeStatus"] == "running"
    assert out["modules"]["iris"] == {
        "runtimeStatus": "running",
        "status": "running",
        "exitCode": 0,
        "statusDescription": "running",
        "lastStartTimeUtc": "2025-03-04T09:55:00Z",
        "lastExitTimeUtc": NEVER,
        "restartCount": 0,
        "lastRestartTimeUtc": NEVER,
        "settings": {"module": "modules/iris-svc", "digest": DIGEST, "port": 5001},
        "type": "modelfleet",
        "version": "2",
    }
    json.dumps(out)  # all of it is JSON as it is


def test_backoff_carries_the_exit_the_restarts_and_the_next_restart() -> None:
    exited = AT - timedelta(seconds=3)
    m = module(
        status="backoff",
        health="unknown",
        exit_code=3,
        exited_at=exited,
        restart_count=2,
        next_restart_at=AT + timedelta(seconds=4, microseconds=500_000),
        last_error="ValueError: bad input shape",
    )
    entry = edge_agent_reported(report({"iris": m}, iris=applied()))["modules"]["iris"]
    assert entry["runtimeStatus"] == "backoff"
    assert entry["status"] == "running"  # still wanted: the agent restarts it
    assert entry["exitCode"] == 3
    assert entry["restartCount"] == 2
    assert entry["lastExitTimeUtc"] == "2025-03-04T09:59:57Z"
    assert entry["lastRestartTimeUtc"] == entry["lastStartTimeUtc"] == "2025-03-04T09:55:00Z"
    assert entry["statusDescription"] == (
        "ValueError: bad input shape; next restart at 2025-03-04T10:00:04.500000Z"
    )


def test_a_failed_module_reports_its_exit_code_and_error() -> None:
    m = module(status="failed", health="unknown", exit_code=137, exited_at=AT, last_error="out of memory")
    out = edge_agent_reported(report({"iris": m}, iris=applied()))
    entry = out["modules"]["iris"]
    assert (entry["runtimeStatus"], entry["exitCode"], entry["statusDescription"]) == (
        "failed",
        137,
        "out of memory",
    )
    assert entry["lastExitTimeUtc"] == "2025-03-04T10:00:00Z"
    # As in IoT Edge: the deployment was applied; the module's own failure is the module's status.
    assert out["lastDesiredStatus"]["code"] == 200


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("pending", "unknown"),
        ("downloading", "unknown"),
        ("starting", "unknown"),
        ("running", "running"),
        ("backoff", "backoff"),
        ("unhealthy", "unhealthy"),
        ("stopped", "stopped"),
        ("failed", "failed"),
    ],
)
def test_runtime_status_uses_iot_edge_names(ours: str, theirs: str) -> None:
    entry = edge_agent_reported(report({"m": module(status=ours)}))["modules"]["m"]
    assert entry["runtimeStatus"] == theirs
    assert entry["status"] == ("stopped" if ours == "stopped" else "running")


def test_a_running_module_failing_its_health_probe_is_unhealthy() -> None:
    entry = edge_agent_reported(report({"m": module(health="unhealthy")}))["modules"]["m"]
    assert entry["runtimeStatus"] == "unhealthy"
    assert entry["statusDescription"] == "running, health probe failing"


def test_a_download_says_how_far_it_is() -> None:
    m = module(status="downloading", download=Download(digest=DIGEST, done_bytes=10, total_bytes=40))
    entry = edge_agent_reported(report({"m": m}))["modules"]["m"]
    assert entry["runtimeStatus"] == "unknown"
    assert entry["statusDescription"] == f"downloading {DIGEST[:19]}: 10 of 40 bytes"


def test_a_failed_deployment_is_500_with_its_reason() -> None:
    out = edge_agent_reported(
        report(
            iris=applied(outcome="failed", reason="module modules/iris-svc:2 did not start"),
            other=applied("other", 1),
        )
    )
    assert out["lastDesiredStatus"] == {
        "code": 500,
        "description": "iris v3: module modules/iris-svc:2 did not start",
    }


def test_the_other_deployment_status_codes() -> None:
    def code(r: ReportedState, online: bool = True) -> tuple[int, str]:
        status = edge_agent_reported(r, online=online)["lastDesiredStatus"]
        return status["code"], status["description"]

    assert code(report(iris=applied(outcome="refused", reason="not signed"))) == (
        400,
        "refused: iris v3: not signed",
    )
    assert code(report(iris=applied(outcome="applying"))) == (406, "applying: iris v3")
    assert code(report(iris=applied()), online=False) == (
        406,
        "device offline; last report at 2025-03-04T10:00:00Z",
    )
    assert code(report()) == (417, "no deployment for this device")
    assert code(report(iris=applied(outcome="not-targeted"))) == (417, "no deployment for this device")
    assert code(report(iris=applied(), gone=applied("gone", 2, "removed"))) == (200, "")


def test_an_offline_device_has_an_unknown_agent() -> None:
    out = edge_agent_reported(report(iris=applied()), online=False)
    assert out["systemModules"]["edgeAgent"]["runtimeStatus"] == "unknown"


def test_times_are_utc_with_z_and_naive_ones_are_taken_as_utc() -> None:
    assert utc_time(None) == "0001-01-01T00:00:00Z"
    assert utc_time(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05Z"
    assert utc_time(datetime(2025, 1, 2, 4, 4, 5, 120, tzinfo=UTC) + timedelta(hours=0)) == (
        "2025-01-02T04:04:05.000120Z"
    )
    plus_two = datetime.fromisoformat("2025-01-02T05:04:05+02:00")
    assert utc_time(plus_two) == "2025-01-02T03:04:05Z"


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["status"], ["device", "show", "dev-01"]])
def test_format_is_an_option_of_status_and_device_show(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(argv).format is None
    assert parser.parse_args([*argv, "--format", "iotedge"]).format == "iotedge"
    assert parser.parse_args([*argv, "--json"]).json
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args([*argv, "--format", "yaml"])


class _FakeHub:
    """What `status` and `device show` read of the connection: its snapshot."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    async def __aenter__(self) -> _FakeHub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> FleetSnapshot:
    snap = FleetSnapshot()
    snap.reports["dev-01"] = report({"iris": module()}, iris=applied())
    snap.presence["dev-01"] = Presence(device_id="dev-01", online=True, at=AT)
    snap.presence["dev-02"] = Presence(device_id="dev-02", online=False, at=AT)
    snap.unreadable["dev-02"] = {"reported": "not JSON"}
    monkeypatch.setattr(_deploy_cli, "open_fleet", lambda ws: _FakeHub(snap))
    monkeypatch.setattr(_deploy_cli._deploy, "documents", lambda hub: [])
    monkeypatch.setattr(_deploy_cli._deploy, "unverified", lambda hub: [])
    monkeypatch.setattr(_deploy_cli._enrolment, "all_enrolled", lambda ws: {})
    return snap


def _run(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    handler = _deploy_cli.run_status if args.command == "status" else _deploy_cli.run_device
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = handler(None, args)  # type: ignore[arg-type]  # the workspace is not read here
    return code, out.getvalue()


def test_status_format_iotedge_prints_every_device_by_id(fleet: FleetSnapshot) -> None:
    code, out = _run("status", "--format", "iotedge")
    assert code == 0
    by_device = json.loads(out)
    assert list(by_device) == ["dev-01", "dev-02"]
    assert by_device["dev-01"]["lastDesiredStatus"]["code"] == 200
    assert by_device["dev-01"]["modules"]["iris"]["runtimeStatus"] == "running"
    assert by_device["dev-02"]["lastDesiredStatus"] == {
        "code": 406,
        "description": "unreadable reported: not JSON",
    }


def test_device_show_format_iotedge_prints_one_device(fleet: FleetSnapshot) -> None:
    code, out = _run("device", "show", "dev-01", "--format", "iotedge")
    assert code == 0
    assert json.loads(out) == edge_agent_reported(fleet.reports["dev-01"], online=True)


def test_json_and_the_table_are_unchanged(fleet: FleetSnapshot) -> None:
    code, out = _run("status", "--json")
    assert code == 0 and "devices" in json.loads(out)
    assert _run("status", "--format", "json")[1].splitlines()[2:] == out.splitlines()[2:]  # "at" differs
    code, table = _run("status")
    assert code == 0 and "dev-01" in table and "{" not in table.splitlines()[0]


def test_json_with_another_format_is_refused() -> None:
    args = argparse.Namespace(json=True, format="iotedge")
    with pytest.raises(ConfigError, match="give one"):
        _deploy_cli._output_format(args)
