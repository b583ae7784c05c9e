"""Which sealing key belongs to which device: bound by the operator, never taken from a report.

A device's reported state is written by whoever can publish on its `reported` topic, so the X25519
key it carries proves nothing: sealing scoring keys to it would hand them to a forger. The binding
of a device id to its key is therefore the publisher's, made by a person: `modelfleet device enroll
ID --key KEY` with the key read from the device (`modelfleet agent key` prints it), or `modelfleet
device approve ID --fingerprint FP`, which enrols the key the device reports *only* if its
fingerprint is the one the operator read on the device, so a forged report cannot enrol itself.

One file per device, `<workspace>/fleets/<fleet>/devices/<id>.json` (owner-only), so enrolments are
easy to review, copy between workstations and remove.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from modules import ConfigError, ModelfleetError
from modules.atomic_file import write_atomic
from modules.pki import check_device_id
from modules.service_keys import key_fingerprint
from publisher._workspace import Workspace

EnrolmentState = Literal["enrolled", "unenrolled", "key-differs"]


class EnrolmentError(ModelfleetError):
    """An enrolment that cannot be made as asked: unknown device, wrong fingerprint, bad key."""


class Enrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str
    public_key: str  # X25519, base64 of the raw 32 bytes, as the agent reports it
    fingerprint: str
    enrolled_at: AwareDatetime
    how: Literal["key", "approved"]


def fingerprint_of(public_key_b64: str) -> str:
    """`modules.service_keys.key_fingerprint` (what `modelfleet agent key` prints on the device:
    the start of sha256 over the raw key), or `EnrolmentError` for anything that is not a key."""
    try:
        return key_fingerprint(public_key_b64.strip())
    except ConfigError as exc:
        raise EnrolmentError(str(exc)) from None


def normalize_fingerprint(text: str) -> str:
    """What the operator typed, without the separators people add when reading one out."""
    value = re.sub(r"[\s:\-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]+", value):
        raise EnrolmentError(f"fingerprint {text!r} is not hexadecimal")
    return value


def parse_public_key(text: str) -> str:
    """A key as given on the command line or in a file: base64 of the raw key, or a PEM public key;
    returned as the agent reports it (base64 of the raw 32 bytes)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError) as exc:
            raise EnrolmentError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, X25519PublicKey):
            raise EnrolmentError("the PEM key is not an X25519 key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()
    fingerprint_of(text)
    return base64.b64encode(base64.b64decode(text, validate=True)).decode()


def _folder(workspace: Workspace) -> Path:
    return workspace.fleet_dir / "devices"


def _path(workspace: Workspace, device_id: str) -> Path:
    try:
        check_device_id(device_id)
    except ConfigError as exc:
        raise EnrolmentError(str(exc)) from None
    return _folder(workspace) / f"{device_id}.json"


def get(workspace: Workspace, device_id: str) -> Enrolment | None:
    path = _path(workspace, device_id)
    try:
        enrolment = Enrolment.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise ConfigError(f"{path} is damaged: {str(exc).splitlines()[0]}") from None
    try:
        consistent = fingerprint_of(enrolment.public_key) == enrolment.fingerprint
    except EnrolmentError:
        consistent = False
    if enrolment.device_id != device_id or not consistent:
        raise ConfigError(f"{path} does not hold a consistent enrolment of {device_id!r}")
    return enrolment


def all_enrolled(workspace: Workspace) -> dict[str, Enrolment]:
    folder = _folder(workspace)
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.json")):
        enrolment = get(workspace, path.stem)
        if enrolment is not None:
            out[enrolment.device_id] = enrolment
    return out


def enroll(
    workspace: Workspace,
    device_id: str,
    public_key: str,
    *,
    how: Literal["key", "approved"] = "key",
    replace: bool = False,
) -> Enrolment:
    """Bind `device_id` to `public_key`; a different key for an enrolled device needs `replace`."""
    key = parse_public_key(public_key)
    fingerprint = fingerprint_of(key)
    existing = get(workspace, device_id)
    if existing is not None and existing.fingerprint != fingerprint and not replace:
        raise EnrolmentError(
            f"device {device_id!r} is enrolled with key {existing.fingerprint}, not {fingerprint}; "
            "pass --replace if the device really has a new key"
        )
    if existing is not None and existing.fingerprint == fingerprint:
        return existing
    enrolment = Enrolment(
        device_id=device_id,
        public_key=key,
        fingerprint=fingerprint,
        enrolled_at=datetime.now(UTC).replace(microsecond=0),
        how=how,
    )
    path = _path(workspace, device_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, enrolment.model_dump_json(indent=1).encode(), mode=0o600)
    return enrolment


def approve(
    workspace: Workspace,
    device_id: str,
    reported_key: str | None,
    fingerprint: str,
    *,
    replace: bool = False,
) -> Enrolment:
    """Enrol the key the device reports, if and only if its fingerprint is `fingerprint`, which the
    operator read on the device itself (the report alone could be anyone's)."""
    given = normalize_fingerprint(fingerprint)
    if not reported_key:
        raise EnrolmentError(f"device {device_id!r} reports no public key; nothing to approve")
    try:
        reported = fingerprint_of(reported_key)
    except EnrolmentError as exc:
        raise EnrolmentError(f"device {device_id!r} reports an invalid public key: {exc}") from None
    if len(given) != len(reported):
        raise EnrolmentError(
            f"a fingerprint has {len(reported)} hex digits, {fingerprint!r} has {len(given)}: not enrolled; "
            "copy it from `modelfleet agent key` on the device"
        )
    if reported != given:
        raise EnrolmentError(
            f"device {device_id!r} reports a key with fingerprint {reported}, not {given}: "
            "not enrolled. The report may be forged; compare with `modelfleet agent key` on the device"
        )
    return enroll(workspace, device_id, reported_key, how="approved", replace=replace)


def unenroll(workspace: Workspace, device_id: str) -> bool:
    path = _path(workspace, device_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def state_of(enrolment: Enrolment | None, reported_key: str | None) -> EnrolmentState:
    """How a device's reported key relates to its enrolment (shown by `status`, never used to seal)."""
    if enrolment is None:
        return "unenrolled"
    if not reported_key:
        return "enrolled"
    try:
        same = fingerprint_of(reported_key) == enrolment.fingerprint
    except EnrolmentError:
        same = False
    return "enrolled" if same else "key-differs"


def reported_fingerprint(reported_key: str | None) -> str | None:
    """The fingerprint of a reported key, for display; None when there is none or it is invalid."""
    if not reported_key:
        return None
    try:
        return fingerprint_of(reported_key)
    except EnrolmentError:
        return None
