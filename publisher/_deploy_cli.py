"""The control-plane commands: `deploy`, `status`, `device`. Kept apart from cli.py so that the
registry-only commands never import the MQTT transport."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from modules import ConfigError, ModelfleetError, NotFoundError
from modules.tags import parse_tags
from publisher import _deploy, _enrolment
from publisher._cli_output import print_json, table
from publisher._deploy import DeploymentSettings
from publisher._fleet import open_fleet
from publisher._hub import FleetConnection
from publisher._iotedge_report import fleet_edge_agent_reported
from publisher._rollout import UNSTAGED_MAX_FAILURE_RATIO, ProgressDisplay, drive
from publisher._status import STATUS_HEADERS, device_row, fleet_status, status_table
from publisher._trust import deployment_slot
from publisher._workspace import Workspace


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line; the ones left out are None (keep / default)."""
    return {
        "target": args.target,
        "priority": args.priority,
        "env": parse_tags(args.env, option="--env") if args.env else None,
        "restart_policy": args.restart_policy,
        "port": args.port,
        "auth": args.auth,
        "rollout": args.rollout,
        "min_healthy_seconds": args.min_healthy,
        "max_failure_ratio": args.max_failure_ratio,
    }


def _doc_json(doc: Any) -> dict[str, Any]:
    return doc.to_json_dict()


def run_deploy(ws: Workspace, args: argparse.Namespace) -> int:
    return asyncio.run(_deploy_async(ws, args))


def _read_manifest(path: str) -> tuple[Any, str]:
    """The JSON in `path` (or stdin for `-`) and the name it suggests (its file name)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    stem = "" if path == "-" else Path(path).name.split(".")[0]
    return data, stem


def _suggested_name(data: Any, stem: str) -> str:
    """A deployment name from the file: IoT Hub's `id` if it has one, else the file name, made into
    a modelfleet name (lower case, `[a-z0-9]` separated by `.`, `_`, `-`)."""
    raw = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else stem
    name = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("._-")
    if not name:
        raise ConfigError("no deployment name: give one with -n NAME")
    return re.sub(r"[._-]{2,}", "-", name)


async def _import(hub: FleetConnection, ws: Workspace, args: argparse.Namespace) -> int:
    data, stem = _read_manifest(args.file)
    name = args.name or _suggested_name(data, stem)
    doc = await _deploy.import_manifest(
        hub,
        ws,
        name,
        data,
        layered=args.layered,
        target=args.target,
        priority=args.priority,
        device=args.device,
        replace_unverified=args.replace_unverified,
    )
    if args.json:
        print_json(_doc_json(doc))
        return 0
    kind = "layered deployment" if doc.layered else "deployment"
    print(f"published {kind} {doc.name} version {doc.version} (target {doc.target_condition!r})")
    return 0


async def _export(hub: FleetConnection, ws: Workspace, args: argparse.Namespace) -> int:
    doc = _deploy.current(hub, args.name, args.device)
    if doc is None:
        raise NotFoundError(f"deployment {args.name!r} does not exist")
    out = _deploy.export_iotedge(doc, ws) if args.format == "iotedge" else doc.to_json_dict()
    text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.name} version {doc.version} as {args.format} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


async def _deploy_async(ws: Workspace, args: argparse.Namespace) -> int:
    async with open_fleet(ws) as hub:
        if args.action == "import":
            return await _import(hub, ws, args)
        if args.action == "export":
            return await _export(hub, ws, args)
        if args.action in ("create", "update"):
            if args.action == "create":
                given = {k: v for k, v in _changes(args).items() if v is not None}
                settings = DeploymentSettings.model_validate({**given, "device": args.device})
                doc = await _deploy.create(
                    hub,
                    ws,
                    args.name,
                    args.module,
                    settings,
                    version=args.version,
                    replace_unverified=args.replace_unverified,
                )
                previous = None
            else:
                doc, previous = await _deploy.update(
                    hub, ws, args.name, args.module, device=args.device, **_changes(args)
                )
            where = f" for device {doc.device}" if doc.device else ""
            if not args.json:
                print(f"published {doc.name} version {doc.version}{where}")
            if not args.wait:
                if args.json:
                    print_json(_doc_json(doc))
                return 0
            display = ProgressDisplay(sys.stderr, final_summary=False)
            result = await drive(
                hub,
                ws,
                doc,
                previous,
                step_timeout_s=args.timeout,
                display=display,
                max_failure_ratio=(
                    UNSTAGED_MAX_FAILURE_RATIO if args.max_failure_ratio is None else args.max_failure_ratio
                ),
            )
            if args.json:
                print_json(
                    {
                        "ok": result.ok,
                        "name": result.name,
                        "version": result.version,
                        "summary": result.summary,
                        "counts": result.counts,
                        "failed_devices": result.failed_devices,
                    }
                )
            else:
                print(result.summary)
            return 0 if result.ok else 1
        if args.action == "list":
            docs = _deploy.documents(hub)
            if args.json:
                print_json([_doc_json(d) for d in docs])
            elif docs:
                rows = [
                    [
                        d.name,
                        str(d.version),
                        d.device or "-",
                        d.target_condition,
                        str(d.priority),
                        ",".join(f"{s}%" for s in d.rollout.steps[: d.rollout.current_step + 1])
                        if d.rollout
                        else "-",
                        ",".join(f"{n}:{m.version}" for n, m in d.content.modules.items()),
                    ]
                    for d in docs
                ]
                print(table(rows, ["name", "version", "device", "target", "priority", "rollout", "modules"]))
            else:
                print("no deployments")
            if not args.json:
                _print_unverified(_deploy.unverified(hub))
            return 0
        if args.action == "show":
            # Shown as the broker holds it, verified or not: inspecting a forgery is the point.
            slot = deployment_slot(hub, args.name, args.device)
            if slot.retained is None:
                raise NotFoundError(f"deployment {args.name!r} does not exist")
            if slot.problem is not None:
                print(f"modelfleet: warning: {slot.topic} is not verified: {slot.problem}", file=sys.stderr)
            elif slot.tombstone is not None:
                print(
                    f"modelfleet: {args.name} was deleted at version {slot.tombstone.version}",
                    file=sys.stderr,
                )
            elif slot.document is None:
                raise NotFoundError(f"deployment {args.name!r} does not exist")
            if slot.retained.raw is None:
                raise NotFoundError(f"{slot.topic} holds no readable document: {slot.problem}")
            print(json.dumps(slot.retained.raw, indent=2))
            return 0
        if args.action == "keys":
            from publisher import _service_keys

            if _deploy.current(hub, args.name) is None:
                raise ModelfleetError(f"deployment {args.name!r} does not exist")
            if args.regen:
                stored = await _service_keys.regenerate(hub, ws, args.name, args.regen)
            else:
                stored = _service_keys.load(ws, args.name)
                if stored is None:
                    raise ModelfleetError(f"deployment {args.name!r} has no keys: create it with --auth")
            if args.json:
                print_json(
                    {"primary": stored.primary, "secondary": stored.secondary, "version": stored.version}
                )
            else:
                print(f"primary:   {stored.primary}\nsecondary: {stored.secondary}")
            return 0
        if args.action == "delete":
            tombstone = await _deploy.delete(
                hub, args.name, device=args.device, workspace=ws, replace_unverified=args.replace_unverified
            )
            print(
                f"deleted {args.name} with a signed tombstone at version {tombstone.version}; devices remove "
                "its modules (a new deployment of this name continues above it)"
            )
            return 0
    raise AssertionError(args.action)


def run_status(ws: Workspace, args: argparse.Namespace) -> int:
    return asyncio.run(_status_async(ws, args))


def _output_format(args: argparse.Namespace) -> str:
    """`--json` or `--format`: table (the default), json or iotedge; both given must agree."""
    given = getattr(args, "format", None)
    if args.json and given not in (None, "json"):
        raise ConfigError(f"--json and --format {given} both given: give one")
    return "json" if args.json else given or "table"


def _iotedge_reported(snap: Any, device_ids: list[str]) -> dict[str, Any]:
    return fleet_edge_agent_reported(
        snap.reports,
        device_ids,
        online={i: snap.online(i) for i in device_ids},
        problems={i: snap.problem(i) for i in device_ids},
    )


async def _status_async(ws: Workspace, args: argparse.Namespace) -> int:
    output = _output_format(args)
    async with open_fleet(ws) as hub:
        status = fleet_status(
            hub.snapshot,
            _deploy.documents(hub),
            args.deployment,
            enrolled=_enrolment.all_enrolled(ws),
            unverified=_deploy.unverified(hub),
        )
        snap = hub.snapshot
    _warn_incomplete(status.get("incomplete"))
    if output == "iotedge":
        # The devices `status` lists (narrowed by --deployment), each as its $edgeAgent reported properties.
        print_json(_iotedge_reported(snap, [d["device_id"] for d in status["devices"]]))
        return 0
    if output == "json":
        print_json(status)
        return 0
    rows = status_table(status)
    print(table(rows, STATUS_HEADERS) if rows else "no devices")
    for d in status["deployments"]:
        where = f" (device {d['device']})" if d["device"] else ""
        step = ""
        if d["rollout"]:
            steps, current = d["rollout"]["steps"], d["rollout"]["current_step"]
            step = f", step {current + 1}/{len(steps)} ({steps[current]}%)"
        print(
            f"{d['name']} v{d['version']}{where}{step}: targeted {d['targeted']}, applied {d['applied']}, "
            f"healthy {d['healthy']}, failed {d['failed']}, offline {d['offline']}"
        )
    for device in status["devices"]:
        if device["problem"]:
            print(f"device {device['device_id']}: {device['problem']}")
    _print_unverified(status["unverified"])
    return 0


def _warn_incomplete(cut: dict[str, Any] | None) -> None:
    """Said on stderr whatever the format, so a partial count is never taken for the fleet."""
    if not cut:
        return
    print(
        f"modelfleet: warning: the broker cut the retained device states it delivered ({cut['cut']}); "
        f"{cut['read_by_name']} device(s) were read one by one, "
        f"{len(cut['known_without_report'])} known device(s) have no report: {cut['note']}",
        file=sys.stderr,
    )


def _print_unverified(items: list[dict[str, Any]]) -> None:
    for u in items:
        name = f" ({u['name']})" if u.get("name") else ""
        print(f"UNVERIFIED {u['topic']}{name}: {u['reason']} (not used, not counted)")


def run_device(ws: Workspace, args: argparse.Namespace) -> int:
    if args.action in ("enroll", "unenroll", "list-enrolled"):
        return _enrolment_commands(ws, args)
    return asyncio.run(_device_async(ws, args))


def _enrolment_commands(ws: Workspace, args: argparse.Namespace) -> int:
    """The workspace's own records: no broker needed, none consulted."""
    if args.action == "list-enrolled":
        enrolled = _enrolment.all_enrolled(ws)
        if args.json:
            print_json([e.model_dump(mode="json") for e in enrolled.values()])
        elif enrolled:
            rows = [[e.device_id, e.fingerprint, e.how, e.enrolled_at.isoformat()] for e in enrolled.values()]
            print(table(rows, ["device", "fingerprint", "how", "enrolled at"]))
        else:
            print("no enrolled devices")
        return 0
    if args.action == "unenroll":
        if not _enrolment.unenroll(ws, args.device_id):
            raise ModelfleetError(f"device {args.device_id!r} is not enrolled")
        print(
            f"unenrolled {args.device_id}: it gets no new scoring keys (regenerate keys to revoke old ones)"
        )
        return 0
    if args.key_file:
        try:
            text = Path(args.key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.key_file}: {exc.strerror}") from None
    else:
        text = args.key
    enrolment = _enrolment.enroll(ws, args.device_id, text, replace=args.replace)
    print(f"enrolled {enrolment.device_id} with key fingerprint {enrolment.fingerprint}")
    return 0


async def _device_async(ws: Workspace, args: argparse.Namespace) -> int:
    async with open_fleet(ws) as hub:
        snap = hub.snapshot
        enrolled = _enrolment.all_enrolled(ws)
        if args.action == "list":
            rows = [device_row(snap, i, enrolled) for i in snap.device_ids]
            if args.json:
                print_json(rows)
            elif rows:
                cells = [
                    [
                        r["device_id"],
                        "online" if r["online"] else "offline",
                        (r["last_seen"] or "-")[:19],
                        ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items())) or "-",
                        r["health"],
                        ",".join(f"{n}:{d['version']}" for n, d in r["deployments"].items()) or "-",
                        r["enrolment"],
                    ]
                    for r in rows
                ]
                headers = ["device", "presence", "last seen", "tags", "health", "deployments", "enrolment"]
                print(table(cells, headers))
            else:
                print("no devices")
            return 0
        if args.device_id not in snap.device_ids:
            raise ConfigError(f"no device {args.device_id!r} in fleet {ws.fleet!r}")
        if args.action == "show":
            output = _output_format(args)
            if output == "iotedge":
                print_json(_iotedge_reported(snap, [args.device_id])[args.device_id])
            elif output == "json":
                print_json(device_row(snap, args.device_id, enrolled))
            else:
                _print_device(snap, args.device_id, enrolled)
            return 0
        if args.action == "approve":
            report = snap.reports.get(args.device_id)
            enrolment = _enrolment.approve(
                ws,
                args.device_id,
                report.device.public_key if report else None,
                args.fingerprint,
                replace=args.replace,
            )
            print(f"enrolled {enrolment.device_id} with key fingerprint {enrolment.fingerprint}")
            return 0
        method, payload = {
            "logs": ("getLogs", lambda: {"module": args.module, "tail": args.tail}),
            "restart": ("restartModule", lambda: {"module": args.module}),
            "ping": ("ping", dict),
        }[args.action]
        answer = await hub.call(args.device_id, method, payload())
    if answer.status != 200:
        error = answer.payload.get("error") if isinstance(answer.payload, dict) else answer.payload
        raise ModelfleetError(f"{args.device_id}: {method} failed ({answer.status}): {error}")
    if getattr(args, "json", False):
        print_json(answer.payload)
    elif args.action == "logs":
        lines = answer.payload.get("lines", []) if isinstance(answer.payload, dict) else []
        print("\n".join(str(line) for line in lines))
    elif args.action == "restart":
        print(f"restarted {args.module} on {args.device_id}")
    else:
        at = answer.payload.get("at") if isinstance(answer.payload, dict) else None
        print(f"{args.device_id} answered at {at}")
    return 0


def _print_device(snap: Any, device_id: str, enrolled: dict[str, Any]) -> None:
    row = device_row(snap, device_id, enrolled)
    print(f"device:      {row['device_id']} ({'online' if row['online'] else 'offline'})")
    if row["problem"]:
        print(f"problem:     {row['problem']}")
    print(f"last seen:   {row['last_seen'] or '-'}")
    print(f"reported key: {row['key_fingerprint'] or '-'} (fingerprint; compare with `modelfleet agent key`)")
    enrolment = {
        "enrolled": f"enrolled ({row['enrolled_fingerprint']})" if row["enrolled_fingerprint"] else "-",
        "unenrolled": "NOT ENROLLED: gets no scoring keys (`modelfleet device approve ID --fingerprint FP`)",
        "key-differs": f"KEY DIFFERS from the enrolled one ({row['enrolled_fingerprint']}): "
        "a re-keyed device or a forged report",
    }[row["enrolment"]]
    print(f"enrolment:   {enrolment}")
    print(f"tags:        {', '.join(f'{k}={v}' for k, v in sorted(row['tags'].items())) or '-'}")
    print(f"health:      {row['health']}")
    for name, d in row["deployments"].items():
        print(
            f"deployment:  {name} v{d['version']} {d['outcome']}"
            + (f" ({d['reason']})" if d["reason"] else "")
        )
    for name, m in row["modules"].items():
        print(f"module:      {name}:{m['version']} {m['status']} {m['health']} port {m['port']}")
        if m["last_error"]:
            print(f"  error:     {m['last_error']}")
    for r in row["refused"]:
        print(f"refused:     {r['deployment']} v{r['version']}: {r['reason']}")
