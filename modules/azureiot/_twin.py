"""How the control plane's documents and reports sit in an IoT Hub device twin.

IoT Hub carries the documents; it does not replace their signatures. So a signed document is
stored as the exact JSON text it was signed as, never as a twin object: twin keys may not hold
`.`, `$` or spaces (a manifest's `$edgeAgent` and `properties.desired` would not fit), a `null`
in a patch deletes a property, and the hub is free to reorder keys. A twin string holds at most
4 KB, so a longer document is split into numbered parts with their count.

Desired properties (written by the publisher, read by the agent):

    modelfleet.deployments.<name>   a fleet-wide deployment document or its tombstone
    modelfleet.override             this device's own document or its tombstone
    modelfleet.keys.<deployment>    this device's sealed scoring keys or their tombstone

Reported properties (written by the agent): `modelfleet.presence` (online, at) and
`modelfleet.state`, a summary of the `ReportedState` that fits IoT Hub's limits; the whole state
stays one `getState` direct method away.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from modules.topics import FleetTopics

ROOT_KEY = "modelfleet"
# IoT Hub limits: a string value holds 4 KB, desired and reported properties 32 KB each.
MAX_STRING_BYTES = 4096
PART_BYTES = 3800  # below 4 KB with room for the hub's own accounting
MAX_REPORTED_BYTES = 24 * 1024  # of the 32 KB, leaving room for what else a device reports
# A reported summary keeps this many refusals (newest first) and this much of each text.
REPORTED_REFUSALS = 5
REPORTED_TEXT = 400

_ESCAPES = {"%": "%25", ".": "%2E", "$": "%24", " ": "%20"}


def escape_key(key: str) -> str:
    """A twin key for any text: `%`, `.`, `$` and space as %XX (deployment names hold dots)."""
    return "".join(_ESCAPES.get(c, c) for c in key)


def unescape_key(key: str) -> str:
    out = key
    for plain, escaped in reversed(list(_ESCAPES.items())):
        out = out.replace(escaped, plain)
    return out


def split_text(text: str) -> str | dict[str, Any]:
    """A string as a twin value: itself when short enough, else `{"parts": n, "0": ..., ...}`
    (the count, because a twin patch merges and parts left from a longer value would stay)."""
    if len(text.encode()) <= MAX_STRING_BYTES:
        return text
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode())
        if size + width > PART_BYTES:
            parts.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    parts.append("".join(current))
    return {"parts": len(parts), **{str(i): part for i, part in enumerate(parts)}}


def join_text(value: Any) -> str | None:
    """The text `split_text` stored; None for anything else (a value no publisher wrote)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not isinstance(value.get("parts"), int):
        return None
    pieces = [value.get(str(i)) for i in range(value["parts"])]
    if not all(isinstance(p, str) for p in pieces):
        return None
    return "".join(pieces)


def document_slots(desired: Mapping[str, Any], topics: FleetTopics, device_id: str) -> dict[str, bytes]:
    """topic -> payload for every document in the desired properties, as the MQTT control plane
    would have them retained. A value that is not text is handed on as it is (as JSON), so the
    agent's intake refuses it and the refusal is reported rather than silently dropped."""
    root = desired.get(ROOT_KEY)
    if not isinstance(root, Mapping):
        return {}
    slots: dict[str, bytes] = {}
    for name, value in _entries(root.get("deployments")):
        slots[topics.deployment(name)] = _payload(value)
    if root.get("override") is not None:
        slots[topics.desired(device_id)] = _payload(root["override"])
    for name, value in _entries(root.get("keys")):
        slots[topics.keys(device_id, name)] = _payload(value)
    return slots


def _entries(section: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(section, Mapping):
        for key, value in section.items():
            if value is not None and not key.startswith("$"):
                yield unescape_key(key), value


def _payload(value: Any) -> bytes:
    text = join_text(value)
    return (text if text is not None else json.dumps(value)).encode()


def desired_document_patch(kind: str, name: str | None, signed_json: str | None) -> dict[str, Any]:
    """The desired-properties patch that puts one signed document in place (`None`: removes the
    property; deletions proper are signed tombstones, written like any document).
    `kind` is `deployments`, `override` or `keys`."""
    value = None if signed_json is None else split_text(signed_json)
    if kind == "override":
        return {ROOT_KEY: {"override": value}}
    if kind not in ("deployments", "keys") or name is None:
        raise ValueError(f"no twin slot {kind!r} for {name!r}")
    return {ROOT_KEY: {kind: {escape_key(name): value}}}


def merge_patch(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A twin patch applied as IoT Hub applies it: objects merge, `null` removes, the rest replaces."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_patch({}, value)
        else:
            out[key] = value
    return out


def diff_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The patch that turns `old` into `new`: changed values, and `null` for what went away."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = diff_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value:
            patch[key] = value
    return patch


def reported_summary(state: Mapping[str, Any]) -> dict[str, Any]:
    """A `ReportedState` (as JSON) cut to what a reported property may hold and the fleet needs
    to see: deployments and their outcomes, modules and their health, the newest refusals.
    Inference counts and latency stay out: they change with every request and would make every
    heartbeat a twin write (IoT Hub throttles those); they travel in the telemetry D2C messages.
    Module twins' own reported properties and download progress stay out (`getState` has them);
    tags that are not plain values are JSON text; no nulls (a null deletes), no arrays, keys
    escaped. Shrinks further to stay under
    `MAX_REPORTED_BYTES` for a device with very many modules."""
    modules = {
        escape_key(name): _clean(
            {
                k: module.get(k)
                for k in (
                    "name", "deployment", "module", "version", "digest", "status", "health", "port",
                    "pid", "restart_count", "started_at", "last_error",
                )
            }
        )
        for name, module in (state.get("modules") or {}).items()
    }  # fmt: skip
    deployments = {
        escape_key(name): _clean({k: d.get(k) for k in ("name", "version", "outcome", "reason", "at")})
        for name, d in (state.get("deployments") or {}).items()
    }
    refused = {
        str(i): _clean({k: r.get(k) for k in ("topic", "deployment", "version", "reason", "at")})
        for i, r in enumerate((state.get("refused") or [])[:REPORTED_REFUSALS])
    }
    device = state.get("device") or {}
    tags = {
        escape_key(k): v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
        for k, v in (state.get("tags") or {}).items()
        if v is not None
    }
    summary: dict[str, Any] = {
        "device_id": state.get("device_id"),
        "fleet": state.get("fleet"),
        "seq": state.get("seq", 0),
        "at": state.get("at"),
        "tags": tags,
        "device": _clean(
            {
                "agent_version": device.get("agent_version"),
                "platform": device.get("platform"),
                "python": device.get("python"),
                "public_key": device.get("public_key"),
                "execution_providers": ",".join(device.get("execution_providers") or []),
            }
        ),
        "deployments": deployments,
        "modules": modules,
        "refused": refused,
    }
    for drop in ("refused", "modules"):
        if len(json.dumps(summary).encode()) <= MAX_REPORTED_BYTES:
            break
        summary[drop] = {}
        summary["truncated"] = True
    return _clean(summary)


def state_from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The `ReportedState` JSON a summary stands for (what `reported_summary` kept of it)."""
    device = dict(summary.get("device") or {})
    providers = device.get("execution_providers")
    device["execution_providers"] = providers.split(",") if isinstance(providers, str) and providers else []
    refused = summary.get("refused") or {}
    return {
        **{k: v for k, v in summary.items() if k in ("device_id", "fleet", "seq", "at")},
        "device": device,
        "tags": {unescape_key(k): v for k, v in (summary.get("tags") or {}).items()},
        "deployments": {unescape_key(k): v for k, v in (summary.get("deployments") or {}).items()},
        "modules": {unescape_key(k): v for k, v in (summary.get("modules") or {}).items()},
        "refused": [refused[k] for k in sorted(refused, key=int)],
    }


def _clean(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, str) and len(item) > REPORTED_TEXT and key in ("reason", "last_error"):
            item = item[: REPORTED_TEXT - 1] + "…"
        out[key] = _clean(item) if isinstance(item, dict) else item
    return out
