from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules._errors import ModelfleetError
from modules.deployment import (
    BadSignatureError,
    DeploymentDocument,
    ReplayedDocumentError,
    TrustError,
    UnsignedDocumentError,
    UntrustedKeyError,
    check_not_replayed,
    sign_document,
    verify_document,
)
from modules.signing import load_public_key, public_key_id, public_key_pem
from tests.deployment._factories import document

PUBLISHER = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
TRUSTED = [PUBLISHER.public_key()]


def signed(**fields: object) -> DeploymentDocument:
    return sign_document(document(**fields), PUBLISHER)


def test_signed_document_verifies_and_names_its_key() -> None:
    doc = signed(rollout={"steps": [10, 50, 100]})

    assert doc.signature is not None
    assert doc.signature.key_id == public_key_id(PUBLISHER)
    assert verify_document(doc, TRUSTED) == public_key_id(PUBLISHER)


def test_signature_survives_the_trip_over_the_wire() -> None:
    wire = signed().model_dump_json(by_alias=True, exclude_unset=True)

    received = DeploymentDocument.model_validate_json(wire)

    assert verify_document(received, TRUSTED) == public_key_id(PUBLISHER)


def test_raw_json_mapping_verifies_as_received() -> None:
    wire = signed().to_json_dict()

    assert verify_document(wire, {"publisher": PUBLISHER.public_key()}) == public_key_id(PUBLISHER)


def test_key_id_is_a_short_sha256_fingerprint_stable_across_pem_loading() -> None:
    key_id = public_key_id(PUBLISHER)

    assert len(key_id) == 16 and int(key_id, 16) >= 0
    assert public_key_id(load_public_key(public_key_pem(PUBLISHER))) == key_id


def _tamper_version(wire: dict) -> None:
    wire["version"] = 2


def _tamper_digest(wire: dict) -> None:
    settings = wire["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["iris"][
        "settings"
    ]
    settings["digest"] = "sha256:" + "cd" * 32


def _tamper_condition(wire: dict) -> None:
    wire["targetCondition"] = "*"


def _tamper_priority(wire: dict) -> None:
    wire["priority"] = 1000


def _tamper_by_adding_a_layer_flag(wire: dict) -> None:
    wire["layered"] = True


@pytest.mark.parametrize(
    "tamper",
    [_tamper_version, _tamper_digest, _tamper_condition, _tamper_priority, _tamper_by_adding_a_layer_flag],
)
def test_tampering_with_any_field_fails_verification(tamper) -> None:
    wire = signed().to_json_dict()
    tamper(wire)

    with pytest.raises(BadSignatureError):
        verify_document(wire, TRUSTED)
    with pytest.raises(BadSignatureError):
        verify_document(DeploymentDocument.model_validate(wire), TRUSTED)


def test_unsigned_document_is_refused() -> None:
    with pytest.raises(UnsignedDocumentError, match="iris-prod"):
        verify_document(document(), TRUSTED)
    with pytest.raises(UnsignedDocumentError):
        verify_document(document().to_json_dict(), TRUSTED)


def test_document_signed_by_an_untrusted_key_is_refused() -> None:
    doc = sign_document(document(), STRANGER)

    with pytest.raises(UntrustedKeyError, match=public_key_id(STRANGER)):
        verify_document(doc, TRUSTED)


def test_signature_from_another_key_under_a_trusted_key_id_is_refused() -> None:
    forged = sign_document(document(), STRANGER)
    assert forged.signature is not None
    relabelled = forged.model_copy(
        update={"signature": forged.signature.model_copy(update={"key_id": public_key_id(PUBLISHER)})}
    )

    with pytest.raises(BadSignatureError):
        verify_document(relabelled, TRUSTED)


def test_mislabelled_trusted_key_mapping_does_not_widen_trust() -> None:
    doc = sign_document(document(), STRANGER)

    with pytest.raises(UntrustedKeyError):
        verify_document(doc, {public_key_id(STRANGER): PUBLISHER.public_key()})


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_malformed_signature_value_is_refused(value: str) -> None:
    wire = signed().to_json_dict()
    wire["signature"]["value"] = value

    with pytest.raises(BadSignatureError):
        verify_document(wire, TRUSTED)


def test_signature_with_unknown_algorithm_is_refused() -> None:
    wire = signed().to_json_dict()
    wire["signature"]["alg"] = "rsa"

    with pytest.raises(BadSignatureError):
        verify_document(wire, TRUSTED)


def test_re_signing_replaces_the_signature() -> None:
    doc = sign_document(signed(), STRANGER)

    assert verify_document(doc, [STRANGER.public_key()]) == public_key_id(STRANGER)


def test_version_above_the_last_applied_is_accepted() -> None:
    check_not_replayed(document(version=4), {"iris-prod": 3, "other": 9})
    check_not_replayed(document(version=1), {})


@pytest.mark.parametrize("last_applied", [3, 4])
def test_version_not_above_the_last_applied_is_refused_as_a_replay(last_applied: int) -> None:
    with pytest.raises(ReplayedDocumentError) as caught:
        check_not_replayed(document(version=3), {"iris-prod": last_applied})

    assert (caught.value.name, caught.value.version, caught.value.last_applied) == (
        "iris-prod",
        3,
        last_applied,
    )


def test_trust_errors_are_modelfleet_errors() -> None:
    for error in (UnsignedDocumentError, BadSignatureError, UntrustedKeyError, ReplayedDocumentError):
        assert issubclass(error, TrustError) and issubclass(error, ModelfleetError)
