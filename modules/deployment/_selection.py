"""Which deployments a device applies, and the desired state they add up to.

Every agent sees every retained deployment of its fleet and must reach the same answer as any
other agent with the same facts, so selection is pure and fully ordered:

1. Per deployment name, the highest version is authoritative for targeting: if its condition does
   not match, the name does not apply at all. If it matches but the device is not yet in its
   rollout step, the device keeps the highest older version it is eligible for (when the caller
   passes one) and the new version is reported as deferred.
2. Among eligible non-layered documents, the strongest is the base. Strength orders by: a
   per-device override (`device` set) above any fleet-wide document, then higher priority, then
   higher version, then the alphabetically first name.
3. Eligible layered documents are applied on top of the base, weakest first, so the strongest
   layer wins any conflict. A layer sets parts of the desired properties by path, as IoT Hub
   merges layered deployments (`modules/deployment/_layered.py`): whole modules, routes, module
   twins or parts of a module twin; the base's runtime and schema versions stand. Without a base
   nothing is applied. A layer whose parts do not make a valid manifest over the base is left out
   and listed in `refused`, so one bad layer never takes the others (or the base) down with it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from modules.deployment._envelope import DeploymentDocument
from modules.deployment._layered import apply_layer
from modules.deployment._manifest import Manifest, describe
from modules.deployment._selected import DeploymentRef, DeviceFacts, Selection

_BUCKETS = 10_000


def rollout_bucket(deployment: str, device_id: str) -> int:
    """A device's fixed place in 0..9999 for one deployment name, the same on every machine."""
    digest = hashlib.sha256(f"{deployment}:{device_id}".encode()).hexdigest()
    return int(digest[:8], 16) % _BUCKETS


def in_rollout(deployment: str, device_id: str, percent: float) -> bool:
    """Whether the device is within the first `percent` of the fleet; growing percent only adds devices."""
    return rollout_bucket(deployment, device_id) < percent * 100


def _ref(doc: DeploymentDocument) -> DeploymentRef:
    return DeploymentRef(doc.name, doc.version)


def _targets(doc: DeploymentDocument, twin: Mapping[str, Any], device_id: str) -> bool:
    if doc.device is not None and doc.device != device_id:
        return False
    return doc.condition.matches(twin)


def _reaches(doc: DeploymentDocument, device_id: str) -> bool:
    return doc.rollout is None or in_rollout(doc.name, device_id, doc.rollout.percent)


def _eligible(
    documents: Iterable[DeploymentDocument], device: DeviceFacts
) -> tuple[list[DeploymentDocument], list[DeploymentRef]]:
    by_name: dict[str, list[DeploymentDocument]] = defaultdict(list)
    for doc in documents:
        by_name[doc.name].append(doc)
    twin = device.twin()
    eligible: list[DeploymentDocument] = []
    deferred: list[DeploymentRef] = []
    for name in sorted(by_name):
        versions = sorted(by_name[name], key=lambda doc: doc.version, reverse=True)
        if not _targets(versions[0], twin, device.device_id):
            continue
        for doc in versions:
            if not _targets(doc, twin, device.device_id):
                continue
            if _reaches(doc, device.device_id):
                eligible.append(doc)
                break
            deferred.append(_ref(doc))
    return eligible, deferred


def _strength_order(documents: Iterable[DeploymentDocument]) -> list[DeploymentDocument]:
    """Weakest first. Two stable sorts: names descending, so that the first name ends up strongest."""
    by_name = sorted(documents, key=lambda doc: doc.name, reverse=True)
    return sorted(by_name, key=lambda doc: (doc.device is not None, doc.priority, doc.version))


def select_deployments(device: DeviceFacts, documents: Iterable[DeploymentDocument]) -> Selection:
    """The desired state for `device` from already verified documents; deterministic for any input order."""
    eligible, deferred = _eligible(documents, device)
    ordered = _strength_order(eligible)
    bases = [doc for doc in ordered if not doc.layered]
    if not bases:
        return Selection(None, (), tuple(deferred))
    base = bases[-1]
    merged = base.content.to_json_dict()
    applied = [_ref(base)]
    refused: list[tuple[DeploymentRef, str]] = []
    for doc in (doc for doc in ordered if doc.layered):
        candidate = apply_layer(merged, doc.content)
        try:
            Manifest.model_validate(candidate)
        except ValidationError as exc:
            refused.append((_ref(doc), f"does not merge over {base.name!r}: {describe(exc)}"))
            continue
        merged = candidate
        applied.append(_ref(doc))
    return Selection(Manifest.model_validate(merged), tuple(applied), tuple(deferred), tuple(refused))
