"""A device's reported state in the shape of IoT Edge's `$edgeAgent` reported properties.

`modelfleet status --format iotedge` and `modelfleet device show ID --format iotedge` print this,
so that what reads `properties.reported` of an `$edgeAgent` twin (dashboards, IoT Hub queries such
as `lastDesiredStatus.code = 200`, scripts) reads a modelfleet device the same way. The names and
values follow IoT Edge's agent:

- `modules.<name>.runtimeStatus` is one of IoT Edge's `unknown`, `backoff`, `running`,
  `unhealthy`, `stopped`, `failed`; modelfleet's `pending`, `downloading` and `starting` have no
  IoT Edge name and are `unknown` (the description says which). A running module whose health
  probe fails is `unhealthy`, as IoT Edge reports a failing health check.
- Times are UTC ISO 8601 with `Z`; a time that never happened is `0001-01-01T00:00:00Z`, .NET's
  `DateTime.MinValue`, as IoT Edge writes it (never null). `exitCode` is 0 until a module exits.
- `lastDesiredStatus.code` uses IoT Edge's deployment status codes: 200 every deployment the
  device runs is applied, 400 a deployment was refused (invalid), 406 status unknown (the device
  is offline, or a deployment is still being applied), 417 no deployment for this device, 500 a
  deployment failed; the description carries the reasons.

What does not carry over: modelfleet has no edge hub on the device (the broker is the fleet's), so
`systemModules` has only `edgeAgent`; modules are `type` `modelfleet` with the document's settings
(`module`, `digest`, `port`); the report carries no desired status, so `status` is `stopped` for a
stopped module and `running` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from modules.device_state import ModuleState, ReportedState

SCHEMA_VERSION = "1.1"
NEVER = "0001-01-01T00:00:00Z"
"""IoT Edge's value for a time that has not happened (`DateTime.MinValue`)."""

RUNTIME_STATUS: dict[str, str] = {
    "pending": "unknown",
    "downloading": "unknown",
    "starting": "unknown",
    "running": "running",
    "backoff": "backoff",
    "unhealthy": "unhealthy",
    "stopped": "stopped",
    "failed": "failed",
}
"""modelfleet's module status -> IoT Edge's `runtimeStatus` (its `ModuleStatus` names)."""

# IoT Edge's DeploymentStatusCode values.
SUCCESSFUL = 200
CONFIG_FORMAT_ERROR = 400
UNKNOWN = 406
CONFIG_EMPTY_ERROR = 417
FAILED = 500


def utc_time(at: datetime | None) -> str:
    """A time as IoT Edge writes one into a twin; NEVER for None (a naive time is taken as UTC)."""
    if at is None:
        return NEVER
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat(timespec="microseconds" if at.microsecond else "seconds").replace("+00:00", "Z")


def runtime_status(module: ModuleState) -> str:
    if module.status == "running" and module.health == "unhealthy":
        return "unhealthy"
    return RUNTIME_STATUS.get(module.status, "unknown")


def status_description(module: ModuleState) -> str:
    """The last error when there is one, else what the module is doing, in a few words."""
    text = module.last_error or module.status
    if module.status == "downloading" and module.download is not None:
        d = module.download
        text = f"downloading {d.digest[:19]}: {d.done_bytes} of {d.total_bytes} bytes"
    elif module.status == "running" and module.health == "unhealthy" and not module.last_error:
        text = "running, health probe failing"
    if module.status == "backoff" and module.next_restart_at is not None:
        text = f"{text}; next restart at {utc_time(module.next_restart_at)}"
    return text


def module_reported(module: ModuleState) -> dict[str, Any]:
    """One entry of `modules`, with IoT Edge's keys in IoT Edge's order."""
    restarted = module.restart_count > 0 and module.started_at is not None
    return {
        "runtimeStatus": runtime_status(module),
        "status": "stopped" if module.status == "stopped" else "running",
        "exitCode": module.exit_code if module.exit_code is not None else 0,
        "statusDescription": status_description(module),
        "lastStartTimeUtc": utc_time(module.started_at),
        "lastExitTimeUtc": utc_time(module.exited_at),
        "restartCount": module.restart_count,
        # A restart is a start: the last one is the last start, once there has been a restart.
        "lastRestartTimeUtc": utc_time(module.started_at) if restarted else NEVER,
        "settings": {"module": module.module, "digest": module.digest, "port": module.port},
        "type": "modelfleet",
        "version": "" if module.version is None else str(module.version),
    }


def last_desired_status(report: ReportedState, *, online: bool = True) -> dict[str, Any]:
    """`{"code", "description"}` over the deployments the device reports (see the module's doc)."""

    def listed(outcome: str) -> list[str]:
        return [
            f"{name} v{d.version}" + (f": {d.reason}" if d.reason else "")
            for name, d in sorted(report.deployments.items())
            if d.outcome == outcome
        ]

    if failed := listed("failed"):
        return {"code": FAILED, "description": "; ".join(failed)}
    if refused := listed("refused"):
        return {"code": CONFIG_FORMAT_ERROR, "description": "refused: " + "; ".join(refused)}
    if not online:
        return {"code": UNKNOWN, "description": f"device offline; last report at {utc_time(report.at)}"}
    if applying := listed("applying"):
        return {"code": UNKNOWN, "description": "applying: " + "; ".join(applying)}
    if not listed("applied"):
        return {"code": CONFIG_EMPTY_ERROR, "description": "no deployment for this device"}
    return {"code": SUCCESSFUL, "description": ""}


def _platform(report: ReportedState) -> dict[str, str]:
    # The agent reports "<system> <release> <machine>", e.g. "Linux 6.1.0 x86_64".
    words = report.device.platform.split()
    return {
        "os": words[0].lower() if words else "",
        "architecture": words[-1] if len(words) > 1 else "",
        "version": report.device.agent_version,
    }


def edge_agent_reported(report: ReportedState, *, online: bool = True) -> dict[str, Any]:
    """The `$edgeAgent` reported properties for one device's report; `online` is its presence."""
    agent = report.device
    return {
        "schemaVersion": SCHEMA_VERSION,
        "version": {"version": agent.agent_version},
        "lastDesiredStatus": last_desired_status(report, online=online),
        "runtime": {
            "type": "modelfleet",
            "platform": _platform(report),
            "settings": {"python": agent.python, "executionProviders": list(agent.execution_providers)},
        },
        "systemModules": {
            "edgeAgent": {
                "runtimeStatus": "running" if online else "unknown",
                "statusDescription": "" if online else "device offline",
                "type": "modelfleet",
                "version": agent.agent_version,
                # When this report was written: IoT Edge has no field for it, the twin's metadata does.
                "lastReportTimeUtc": utc_time(report.at),
            }
        },
        "modules": {name: module_reported(m) for name, m in sorted(report.modules.items())},
    }


def unreadable_reported(problem: str | None) -> dict[str, Any]:
    """For a device without a readable report: IoT Edge's "status unknown" and why."""
    return {
        "schemaVersion": SCHEMA_VERSION,
        "lastDesiredStatus": {"code": UNKNOWN, "description": problem or "no report from this device"},
        "systemModules": {},
        "modules": {},
    }


def fleet_edge_agent_reported(
    reports: Mapping[str, ReportedState],
    device_ids: Iterable[str],
    *,
    online: Mapping[str, bool],
    problems: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Device id -> its `$edgeAgent` reported properties, for `status --format iotedge`."""
    out = {}
    for device_id in device_ids:
        report = reports.get(device_id)
        out[device_id] = (
            edge_agent_reported(report, online=online.get(device_id, False))
            if report is not None
            else unreadable_reported((problems or {}).get(device_id))
        )
    return out
