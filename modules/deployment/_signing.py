"""Detached Ed25519 signatures on deployment documents, and the replay rule.

The signature covers the canonical JSON of the whole document except its `signature` field, so
every field that steers the agent (version, target condition, priority, rollout, each module's
digest) is protected, and the signature can travel inside the document it signs.

Verify what arrived on the wire when you can: `verify_document` accepts the parsed JSON mapping
as well as a `DeploymentDocument`, and a mapping is checked exactly as received, so a document
stays verifiable even if this code would re-serialise one of its values differently.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from modules.deployment._canonical import canonical_json
from modules.deployment._errors import (
    BadSignatureError,
    ReplayedDocumentError,
    UnsignedDocumentError,
    UntrustedKeyError,
)
from modules.deployment._signature import Signature
from modules.deployment._tombstone import Tombstone
from modules.signing import public_key_id

if TYPE_CHECKING:  # the document's classes are not needed to sign or check a mapping
    from modules.deployment._envelope import DeploymentDocument

SIGNATURE_FIELD = "signature"


if TYPE_CHECKING:
    Signable = DeploymentDocument | Tombstone
_D = TypeVar("_D", bound=BaseModel)  # a DeploymentDocument or a Tombstone


def signing_payload(doc: Signable | Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: canonical JSON of the document without its signature."""
    data = doc.to_json_dict() if isinstance(doc, BaseModel) else doc
    return canonical_json({key: value for key, value in data.items() if key != SIGNATURE_FIELD})


def signature_for(payload: bytes, private_key: Ed25519PrivateKey) -> Signature:
    value = base64.b64encode(private_key.sign(payload)).decode("ascii")
    return Signature(key_id=public_key_id(private_key), alg="ed25519", value=value)


def sign_document(doc: _D, private_key: Ed25519PrivateKey) -> _D:
    """A copy of `doc` (a deployment document or a tombstone) carrying a fresh signature; any
    earlier signature is replaced."""
    return doc.model_copy(update={"signature": signature_for(signing_payload(doc), private_key)})


def sign_mapping(data: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Any JSON object (a method request, say) with a `signature` over its canonical form."""
    unsigned = {key: value for key, value in data.items() if key != SIGNATURE_FIELD}
    signature = signature_for(canonical_json(unsigned), private_key)
    return {**unsigned, SIGNATURE_FIELD: signature.model_dump(by_alias=True, mode="json")}


def _trusted_by_id(
    keys: Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey],
) -> dict[str, Ed25519PublicKey]:
    # Ids are recomputed even for a mapping: a mislabelled configuration must not widen trust.
    values = keys.values() if isinstance(keys, Mapping) else keys
    return {public_key_id(key): key for key in values}


def _describe(doc: Signable | Mapping[str, Any]) -> str:
    if isinstance(doc, Tombstone):
        return f"deletion of {doc.name!r} version {doc.version}"
    if isinstance(doc, BaseModel):  # a DeploymentDocument
        return f"deployment {doc.name!r} version {doc.version}"
    kind = "deletion of" if doc.get("kind") == "tombstone" else "deployment"
    return f"{kind} {doc.get('name')!r} version {doc.get('version')}"


def verify_document(
    doc: Signable | Mapping[str, Any],
    trusted_public_keys: Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey],
    *,
    what: str | None = None,
) -> str:
    """Prove `doc` (a document, a tombstone or any signed JSON object) was signed, unmodified, by
    a trusted publisher; return the signing key's id. `what` names it in errors."""
    what = what or _describe(doc)
    if isinstance(doc, BaseModel):  # a DeploymentDocument or a Tombstone
        signature = doc.signature
    else:
        raw = doc.get(SIGNATURE_FIELD)
        if raw is None:
            signature = None
        else:
            try:
                signature = Signature.model_validate(raw)
            except ValueError:
                raise BadSignatureError(f"{what}: malformed signature field") from None
    if signature is None:
        raise UnsignedDocumentError(f"{what} is not signed")
    key = _trusted_by_id(trusted_public_keys).get(signature.key_id)
    if key is None:
        raise UntrustedKeyError(f"{what} is signed by key {signature.key_id}, which is not trusted")
    try:
        raw_signature = base64.b64decode(signature.value, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignatureError(f"{what}: signature value is not base64") from None
    try:
        key.verify(raw_signature, signing_payload(doc))
    except InvalidSignature:
        raise BadSignatureError(
            f"{what}: signature by key {signature.key_id} does not match the document (modified?)"
        ) from None
    return signature.key_id


def check_not_replayed(doc: DeploymentDocument, last_applied_versions: Mapping[str, int]) -> None:
    """Refuse a version that is not above the last applied one for the same deployment name.

    An equal version is refused too: it is either a harmless redelivery of a retained message or
    a replay, and telling them apart is the caller's business (`ReplayedDocumentError.last_applied`).
    """
    last = last_applied_versions.get(doc.name)
    if last is not None and doc.version <= last:
        raise ReplayedDocumentError(doc.name, doc.version, last)
