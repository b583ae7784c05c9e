"""What the fleet is doing, read from the agents' own retained reports.

One classification serves both `modelfleet status` and the rollout watcher, so "healthy" means
the same thing in the table a person reads and in the decision to advance a rollout: the device
reports the deployment applied at (at least) the version in question, and every module that
deployment owns is running and not unhealthy.

Nothing shown here is trusted: reports are whatever was published on a device's topic, and only
documents that verify as this workspace's are counted as deployments. What does not verify is
listed as unverified with the reason, a report that does not parse makes its device "unreadable",
and every device says whether its reported key is the enrolled one; nothing of it crashes status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from modules.deployment import DeploymentDocument, DeviceFacts, in_rollout
from modules.device_state import ModuleState, ReportedState
from publisher._enrolment import Enrolment, reported_fingerprint, state_of
from publisher._hub import FleetSnapshot, now

Stage = Literal["pending", "downloading", "starting", "healthy", "failed", "offline"]
STAGES: tuple[Stage, ...] = ("pending", "downloading", "starting", "healthy", "failed", "offline")


@dataclass(frozen=True)
class DeviceProgress:
    device_id: str
    targeted: bool
    in_step: bool
    stage: Stage
    reason: str | None = None


def is_targeted(doc: DeploymentDocument, report: ReportedState) -> bool:
    """Whether the device should run `doc`: its condition matches, and nothing stronger won.

    The condition is evaluated on the tags the device reports; once the device has seen this
    version, its own verdict counts (a higher-priority deployment makes it report `not-targeted`).
    """
    if doc.device is not None and doc.device != report.device_id:
        return False
    seen = report.deployments.get(doc.name)
    if seen is not None and seen.version >= doc.version and seen.outcome == "not-targeted":
        return seen.reason is not None  # a reason means "not in the rollout step yet": still targeted
    return doc.condition.matches(DeviceFacts(report.device_id, tags=report.tags).twin())


def in_step(doc: DeploymentDocument, device_id: str) -> bool:
    return doc.rollout is None or in_rollout(doc.name, device_id, doc.rollout.percent)


def owned_modules(report: ReportedState, deployment: str) -> list[ModuleState]:
    return [m for m in report.modules.values() if m.deployment == deployment]


def _modules_of_version(doc: DeploymentDocument, report: ReportedState) -> list[ModuleState]:
    """The device's entries for the modules this version of the document wants: a stale entry
    (a module an earlier version had, or a failed one no longer wanted) must not decide the
    verdict on this version."""
    wanted = doc.content.modules
    out = []
    for module in owned_modules(report, doc.name):
        spec = wanted.get(module.name)
        if spec is None:
            continue
        digest = getattr(getattr(spec, "settings", None), "digest", None)
        if digest is not None and module.digest is not None and module.digest != digest:
            continue  # an older version: still serving while this one comes up, or a stale entry
        out.append(module)
    return out


def stage_of(doc: DeploymentDocument, report: ReportedState, online: bool) -> tuple[Stage, str | None]:
    seen = report.deployments.get(doc.name)
    if not online:
        if seen is not None and seen.version >= doc.version:
            # It had this version and went away: not healthy, whatever it said last.
            return "failed", f"went offline after receiving version {doc.version}"
        return "offline", None
    modules = _modules_of_version(doc, report)
    if seen is not None and seen.version >= doc.version:
        if seen.outcome == "failed":
            return "failed", seen.reason
        if seen.outcome == "applied":
            if any(m.status == "failed" for m in modules):
                return "failed", next(m.last_error for m in modules if m.status == "failed")
            if modules and all(m.status == "running" and m.health != "unhealthy" for m in modules):
                return "healthy", None
            return "starting", None
    statuses = {m.status for m in modules}
    if "downloading" in statuses:
        return "downloading", None
    if "starting" in statuses:
        return "starting", None
    return "pending", None


def progress(doc: DeploymentDocument, snapshot: FleetSnapshot) -> list[DeviceProgress]:
    """Every reporting device's place in the rollout of `doc` (its current step)."""
    out = []
    for device_id, report in sorted(snapshot.reports.items()):
        targeted = is_targeted(doc, report)
        stage, reason = stage_of(doc, report, snapshot.online(device_id))
        out.append(DeviceProgress(device_id, targeted, targeted and in_step(doc, device_id), stage, reason))
    return out


def stage_counts(devices: list[DeviceProgress]) -> dict[Stage, int]:
    counts = Counter(d.stage for d in devices)
    return {stage: counts.get(stage, 0) for stage in STAGES}


# -- the status table ----------------------------------------------------------------------------


def _device_health(report: ReportedState | None) -> str:
    if report is None:
        return "unknown"
    if any(d.outcome == "failed" for d in report.deployments.values()):
        return "failed"
    modules = list(report.modules.values())
    if any(m.status in ("failed", "unhealthy", "backoff") or m.health == "unhealthy" for m in modules):
        return "unhealthy"
    if modules and all(m.status == "running" for m in modules):
        return "healthy"
    return "idle" if not modules else "transitioning"


def _rate_per_min(module: ModuleState, at: datetime) -> float | None:
    if module.started_at is None or module.status != "running":
        return None
    seconds = (at - module.started_at).total_seconds()
    return round(module.inference_count * 60 / seconds, 2) if seconds > 0 else None


def device_row(
    snapshot: FleetSnapshot, device_id: str, enrolled: Mapping[str, Enrolment] | None = None
) -> dict[str, Any]:
    report = snapshot.reports.get(device_id)
    presence = snapshot.presence.get(device_id)
    seen = [t for t in (presence.at if presence else None, report.at if report else None) if t]
    problem = snapshot.problem(device_id)
    reported_key = report.device.public_key if report else None
    enrolment = (enrolled or {}).get(device_id)
    row: dict[str, Any] = {
        "device_id": device_id,
        "online": snapshot.online(device_id),
        "last_seen": max(seen).isoformat() if seen else None,
        "tags": dict(report.tags) if report else {},
        "health": "unreadable" if problem and report is None else _device_health(report),
        "problem": problem,
        "enrolment": state_of(enrolment, reported_key),
        "key_fingerprint": reported_fingerprint(reported_key),
        "enrolled_fingerprint": enrolment.fingerprint if enrolment else None,
        "deployments": {},
        "modules": {},
        "refused": [],
    }
    if report is None:
        return row
    row["deployments"] = {
        name: {"version": d.version, "outcome": d.outcome, "reason": d.reason}
        for name, d in sorted(report.deployments.items())
    }
    row["modules"] = {
        name: {
            "deployment": m.deployment,
            "module": m.module,
            "version": m.version,
            "digest": m.digest,
            "status": m.status,
            "health": m.health,
            "port": m.port,
            "restart_count": m.restart_count,
            "last_error": m.last_error,
            "inference_count": m.inference_count,
            "inference_errors": m.inference_errors,
            "inferences_per_min": _rate_per_min(m, report.at),
            "latency_ms_avg": m.latency_ms_avg,
            "reported_properties": m.reported_properties,
        }
        for name, m in sorted(report.modules.items())
    }
    row["refused"] = [r.model_dump(mode="json") for r in report.refused]
    return row


def deployment_summary(doc: DeploymentDocument, snapshot: FleetSnapshot) -> dict[str, Any]:
    devices = progress(doc, snapshot)
    targeted = [d for d in devices if d.targeted]
    applied = [
        d
        for d in targeted
        if (seen := snapshot.reports[d.device_id].deployments.get(doc.name)) is not None
        and seen.version >= doc.version
        and seen.outcome == "applied"
    ]
    return {
        "name": doc.name,
        "version": doc.version,
        "device": doc.device,
        "target": doc.target_condition,
        "priority": doc.priority,
        "rollout": (
            {"steps": doc.rollout.steps, "current_step": doc.rollout.current_step} if doc.rollout else None
        ),
        "targeted": len(targeted),
        "in_step": sum(d.in_step for d in targeted),
        "applied": len(applied),
        "healthy": sum(d.stage == "healthy" for d in targeted),
        "failed": sum(d.stage == "failed" for d in targeted),
        "offline": sum(d.stage == "offline" for d in targeted),
    }


def fleet_status(
    snapshot: FleetSnapshot,
    documents: list[DeploymentDocument],
    deployment: str | None = None,
    *,
    enrolled: Mapping[str, Enrolment] | None = None,
    unverified: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The whole answer of `modelfleet status --json`; `deployment` narrows it to one deployment.

    `documents` must be the verified ones; `unverified` (topic, name, device, reason) are listed
    as such, never counted."""
    docs = [d for d in documents if deployment is None or d.name == deployment]
    device_ids = snapshot.device_ids
    if deployment is not None:
        device_ids = [
            i
            for i in device_ids
            if i in snapshot.reports
            and (
                deployment in snapshot.reports[i].deployments
                or any(is_targeted(d, snapshot.reports[i]) for d in docs)
            )
        ]
    return {
        "at": now().isoformat(),
        "devices": [device_row(snapshot, i, enrolled) for i in device_ids],
        "deployments": [deployment_summary(d, snapshot) for d in docs],
        "unverified": [
            dict(u) for u in unverified if deployment is None or u.get("name") in (deployment, None)
        ],
        "incomplete": incomplete(snapshot),
    }


def incomplete(snapshot: FleetSnapshot) -> dict[str, Any] | None:
    """None when every retained device state on the broker was read; otherwise where the broker
    cut the delivery and what was done about it, so nobody takes a partial count for the fleet."""
    if not snapshot.cut:
        return None
    return {
        "cut": dict(snapshot.cut),
        "read_by_name": snapshot.read_by_name,
        "known_without_report": sorted(snapshot.missing),
        "note": (
            "the broker dropped retained messages that did not fit its per-client queue; devices "
            "neither enrolled nor seen may be missing from this status (Mosquitto: max_queued_messages, "
            "see docs/hub.md)"
        ),
    }


_ENROLMENT_CELL = {"enrolled": "yes", "unenrolled": "NO", "key-differs": "KEY DIFFERS"}
"""Loud where it matters: an unenrolled device gets no scoring keys, and a reported key that is
not the enrolled one is either a re-keyed device or a forged report."""


def status_table(status: dict[str, Any]) -> list[list[str]]:
    """One row per device and module, for people."""
    rows = []
    for device in status["devices"]:
        deployments = ",".join(
            f"{n}:{d['version']}({d['outcome']})" for n, d in device["deployments"].items()
        )
        modules = device["modules"] or {"-": None}
        for name, m in modules.items():
            rows.append(
                [
                    device["device_id"],
                    "online" if device["online"] else "offline",
                    (device["last_seen"] or "-")[:19],
                    deployments or "-",
                    name if m is None else f"{name}:{m['version']}",
                    "-" if m is None else m["status"],
                    device["health"],
                    "-" if m is None or m["inferences_per_min"] is None else f"{m['inferences_per_min']}/min",
                    "-" if m is None or m["latency_ms_avg"] is None else f"{m['latency_ms_avg']:.1f}ms",
                    {"enrolled": "yes", "unenrolled": "NO", "key-differs": "KEY DIFFERS"}[
                        device["enrolment"]
                    ],
                ]
            )
    return rows


STATUS_HEADERS = [
    "device",
    "presence",
    "last seen",
    "deployments",
    "module",
    "status",
    "health",
    "rate",
    "latency",
    "enrolled",
]
