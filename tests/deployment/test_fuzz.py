"""Property-based fuzzing of everything that reads control-plane input from the network.

Documents are valid ones with random damage (fields deleted, replaced by random JSON of the wrong
type, keys added, bytes flipped) and, where a signature would stop the damage at the door,
re-signed by a trusted key so that the damage reaches the schema and everything after it. The only
acceptable outcomes are a value or one of the refusals each layer promises: `PayloadRefused`,
pydantic's `ValidationError`, a `DeploymentError`/`ModelfleetError` subclass, or, from the
agent's intake, a verdict. Any other exception is a bug that a hostile or broken publisher could
turn into a crashed agent.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent._intake import Intake, Refused, Verdict
from modules._errors import ModelfleetError
from modules.deployment import (
    ConditionSyntaxError,
    DeploymentDocument,
    DeploymentError,
    DeviceFacts,
    DockerSettings,
    Manifest,
    parse_condition,
    select_deployments,
    sign_document,
    signing_payload,
    verify_document,
)
from modules.safe_json import PayloadRefused, loads_limited
from modules.service_keys import ServiceKeys, device_public_key, open_keys, seal_keys
from modules.signing import public_key_id
from modules.topics import FleetTopics
from tests.deployment._factories import document, manifest, modelfleet_module

PUBLISHER = Ed25519PrivateKey.generate()
TRUSTED = [PUBLISHER.public_key()]
DEVICE_KEY = X25519PrivateKey.generate()
TOPICS = FleetTopics("factory")

# Explicit budgets: thousands of examples over the module, each test a few seconds. No example
# database: it would leave a .hypothesis folder in the checkout, and the inputs are cheap to find.
FUZZ = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DOCS = Path(__file__).parents[2] / "docs" / "manifest.md"
_DATA = Path(__file__).parent / "data"


def _sign_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """Sign any mapping as the trusted publisher would, so damage gets past the signature check."""
    unsigned = {key: value for key, value in raw.items() if key != "signature"}
    value = base64.b64encode(PUBLISHER.sign(signing_payload(unsigned))).decode()
    return {**unsigned, "signature": {"keyId": public_key_id(PUBLISHER), "alg": "ed25519", "value": value}}


def _base_documents() -> list[dict[str, Any]]:
    docker = {
        "version": "1.4",
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "imagePullPolicy": "on-create",
        "startupOrder": 0,
        "env": {"WORKERS": {"value": 1}, "RATIO": {"value": 0.5}, "DEBUG": {"value": True}},
        "settings": {"image": "registry.local:5000/camera:1.4", "createOptions": '{"HostConfig":{}}'},
    }
    iris = modelfleet_module(
        resources={"cpus": 2.0, "memory_mb": 1024, "gpus": 1}, healthProbe={"path": "/ready", "period_s": 5.0}
    )
    rich = document(
        version=7,
        targetCondition="tags.ring IN ['canary', 'beta'] AND NOT IS_DEFINED(tags.frozen)",
        priority=10,
        rollout={"steps": [10, 50, 100], "currentStep": 1, "maxFailureRatio": 0.05},
        content=manifest(
            {"iris": iris, "camera": docker},
            routes={"r": "FROM /messages/* INTO $upstream", "s": {"route": "FROM /x INTO $upstream"}},
            iris={"threshold": 0.8},
        ),
    )
    override = document(name="override", device="dev-1", layered=True)
    return [sign_document(doc, PUBLISHER).to_json_dict() for doc in (document(), rich, override)]


def _base_manifests() -> list[dict[str, Any]]:
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", _DOCS.read_text(), re.S)]
    return [blocks[0], *(json.loads(path.read_text()) for path in sorted(_DATA.glob("*.json"))), manifest()]


def _base_tombstone() -> dict[str, Any]:
    return _sign_raw(
        {
            "kind": "tombstone",
            "of": "deployment",
            "fleet": "factory",
            "name": "iris-prod",
            "version": 9,
            "deletedAt": "2024-05-01T12:00:00Z",
        }
    )


def _base_keys() -> dict[str, Any]:
    return seal_keys(
        ServiceKeys.generate(),
        device_public_key(DEVICE_KEY),
        fleet="factory",
        name="iris-prod",
        device="dev-1",
        version=1,
        signing_key=PUBLISHER,
    )


DOCUMENTS = _base_documents()
MANIFESTS = _base_manifests()
TOMBSTONE = _base_tombstone()
KEYS = _base_keys()

# Names a mutation may add or replace: the real field names reach validators, random ones the
# "unknown field" rules.
FIELD_NAMES = sorted(
    {
        *(key for doc in (*DOCUMENTS, TOMBSTONE, KEYS) for key in doc),
        *("modulesContent", "$edgeAgent", "$edgeHub", "properties.desired", "schemaVersion", "modules"),
        *("systemModules", "runtime", "settings", "env", "value", "type", "digest", "port", "keyId"),
        *("steps", "currentStep", "kind", "of", "sealed", "ephemeral", "nonce", "ciphertext", "alg"),
    }
)

# -- strategies -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([0, 1, -1, 1.0, 0.0, -0.0, 2**64, 10**150, 1e308, "", "*", "sha256:" + "0" * 64])
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

_CONDITION_TOKENS = [
    *("tags.site", "tags.a.b", "deviceId", "properties.reported.mem", "properties.desired.x", "site"),
    *("=", "!=", "<>", "<", "<=", ">", ">=", "==", "&"),
    *("AND", "or", "NOT", "IN", "IS_DEFINED", "true", "FALSE", "null", "*"),
    *("(", ")", "[", "]", ",", "'plant-1'", "'o''b'", "'", "1", "-2.5e3", "1e999", "9" * 50),
]
conditions = (
    st.text(max_size=60)
    | st.lists(st.sampled_from(_CONDITION_TOKENS), max_size=30).map(" ".join)
    | st.builds(
        lambda depth, opener, body: opener * depth + body + (")" * depth if "(" in opener else ""),
        st.integers(0, 2000),
        st.sampled_from(["NOT ", "(", "NOT (", "not("]),
        st.sampled_from(["tags.a = 1", "tags.a IN [1, 'x']", "IS_DEFINED(tags.a)", ""]),
    )
)


def _retyped(value: Any) -> list[Any]:
    """Values of a nearby wrong type: the mistakes a sloppy or hostile publisher would make."""
    options: list[Any] = [str(value), [value], {"value": value}, None, True]
    if isinstance(value, bool):
        options += [int(value), float(value)]
    elif isinstance(value, int):
        options += [float(value), -value, value + 2**63, str(value) + ".0"]
    elif isinstance(value, float):
        options += [int(value) if value.is_integer() else value * 1e308, -value]
    elif isinstance(value, str):
        options += [value * 50, value.upper(), value + "\x00", "\ud800", len(value)]
    return options


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]], resign: bool | None = None) -> dict[str, Any]:
    """A copy of one base with 1-4 random changes below the root (the root stays an object)."""
    doc = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        if not doc:
            doc[draw(st.sampled_from(FIELD_NAMES))] = draw(json_values)
            continue
        path = draw(st.sampled_from([p for p in _paths(doc) if p]))
        *parents, last = path
        container = doc
        for step in parents:
            container = container[step]
        action = draw(st.sampled_from(["delete", "replace", "retype", "add", "condition"]))
        if action == "delete":
            del container[last]
        elif action == "replace":
            container[last] = draw(json_values)
        elif action == "retype":
            container[last] = draw(st.sampled_from(_retyped(container[last])))
        elif action == "condition":
            container[last] = draw(conditions)
        elif isinstance(container, dict):
            container[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(json_values)
        else:
            container.insert(draw(st.integers(0, len(container))), draw(json_values))
    should_sign = draw(st.booleans()) if resign is None else resign
    if should_sign:
        # Without a canonical form (NaN, a lone surrogate) it goes out with its old signature.
        with contextlib.suppress(DeploymentError):
            doc = _sign_raw(doc)
    return doc


def _encode(value: Any) -> bytes:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:
        # An integer above Python's 4300-digit limit cannot be printed; send its digits instead.
        return b'{"version": ' + b"1" * 5000 + b"}"
    return text.encode("utf-8", "surrogatepass")


_VALID_PAYLOADS = [_encode(doc) for doc in (*DOCUMENTS, TOMBSTONE)]
_INTERESTING_BYTES = b'[]{}",:\\0123456789eE.-+ tnfu\x00\xff\xc3\xa9'


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """A valid signed payload with a few bytes inserted, deleted or replaced."""
    payload = bytearray(draw(st.sampled_from(_VALID_PAYLOADS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(payload)))
        byte = draw(st.sampled_from(_INTERESTING_BYTES) | st.integers(0, 255))
        action = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        if action == "insert" or position == len(payload):
            payload.insert(position, byte)
        elif action == "delete":
            del payload[position]
        elif action == "replace":
            payload[position] = byte
        else:
            payload[position:position] = bytes([byte]) * draw(st.integers(1, 200))
    return bytes(payload)


payloads = (
    st.binary(max_size=300)
    | json_values.map(_encode)
    | damaged_bytes()
    | mutated(DOCUMENTS).map(_encode)
    | mutated([TOMBSTONE]).map(_encode)
    | st.builds(lambda depth, opener: opener * depth, st.integers(0, 5000), st.sampled_from([b"[", b'{"a":']))
    | st.integers(90, 5000).map(lambda digits: b"1" * digits)
)

twins = st.builds(
    lambda device, tags, reported, desired: DeviceFacts(device, tags, reported, desired).twin(),
    st.text(max_size=10),
    st.dictionaries(st.sampled_from(["site", "a", "ring", "frozen"]) | st.text(max_size=5), json_values),
    st.dictionaries(st.sampled_from(["mem", "os"]), json_values),
    st.dictionaries(st.sampled_from(["x"]), json_values),
)

# -- properties ------------------------------------------------------------------------------


@FUZZ
@given(payloads)
def test_loads_limited_returns_what_json_loads_would_or_refuses(payload: bytes) -> None:
    try:
        value = loads_limited(payload)
    except PayloadRefused:
        return
    assert value == json.loads(payload)


@FUZZ
@given(st.one_of(mutated(DOCUMENTS, resign=False), json_values), twins)
def test_document_model_validates_or_refuses_and_a_valid_one_is_usable(raw: Any, twin: dict) -> None:
    try:
        doc = DeploymentDocument.model_validate(raw)
    except ValidationError:
        return
    assert isinstance(doc.condition.matches(twin), bool)
    doc.to_json_dict()
    device = DeviceFacts(twin["deviceId"], twin["tags"], twin["properties"]["reported"])
    select_deployments(device, [doc])


@FUZZ
@given(mutated(DOCUMENTS, resign=False))
def test_a_changed_document_never_verifies_and_fails_with_a_trust_error(raw: dict[str, Any]) -> None:
    try:
        key_id = verify_document(raw, TRUSTED)
    except DeploymentError:
        return
    # It verified, so the damage must not have touched anything the signature covers.
    assert key_id == public_key_id(PUBLISHER)
    assert any(signing_payload(raw) == signing_payload(base) for base in DOCUMENTS)


@FUZZ
@given(mutated(DOCUMENTS, resign=True))
def test_a_re_signed_damaged_document_verifies_as_received_then_validates_or_refuses(
    raw: dict[str, Any],
) -> None:
    try:
        verify_document(raw, TRUSTED)
        doc = DeploymentDocument.model_validate(raw)
        verify_document(doc, TRUSTED)  # may differ after coercion: then a BadSignatureError
    except (DeploymentError, ValidationError):
        return


@FUZZ
@given(conditions, twins)
def test_conditions_parse_or_refuse_and_matching_never_raises(text: str, twin: dict) -> None:
    try:
        condition = parse_condition(text)
    except ConditionSyntaxError as exc:
        assert exc.column >= 1
        return
    assert isinstance(condition.matches(twin), bool)


@FUZZ
@given(st.one_of(mutated(MANIFESTS, resign=False), json_values))
def test_manifest_validates_or_refuses_and_a_valid_one_round_trips(raw: Any) -> None:
    try:
        parsed = Manifest.model_validate(raw)
    except ValidationError:
        return
    assert Manifest.model_validate(parsed.to_json_dict()).to_json_dict() == parsed.to_json_dict()
    assert isinstance(parsed.modules, dict)


@FUZZ
@given(mutated([KEYS]))
def test_a_damaged_keys_document_never_opens_and_fails_with_a_modelfleet_error(wire: dict[str, Any]) -> None:
    try:
        doc, _ = open_keys(wire, DEVICE_KEY, TRUSTED, fleet="factory", device="dev-1")
    except ModelfleetError:
        return
    # Opened: then it must be the same sealed box for the same device and deployment.
    assert (doc.fleet, doc.device, doc.name) == ("factory", "dev-1", "iris-prod")
    assert doc.sealed.model_dump() == {key: KEYS["sealed"][key] for key in doc.sealed.model_dump()}


@FUZZ
@given(
    st.sampled_from([TOPICS.deployment("iris-prod"), TOPICS.deployment("override"), TOPICS.desired("dev-1")])
    | st.text(max_size=30),
    payloads,
    st.dictionaries(st.sampled_from(["iris-prod", "override", "device:dev-1"]), json_values, max_size=2),
    st.dictionaries(st.sampled_from(["iris-prod", "override", "override@dev-1"]), st.integers(), max_size=2),
)
def test_intake_turns_any_payload_into_a_verdict(
    topic: str, payload: bytes, accepted_raw: dict, last_versions: dict
) -> None:
    intake = Intake(TOPICS, "dev-1", TRUSTED)

    _, verdict = intake.evaluate(topic, payload, accepted_raw, last_versions)

    assert isinstance(verdict, Verdict)


# -- found by fuzzing, fixed -------------------------------------------------------------------


def test_deeply_nested_create_options_are_refused_cleanly() -> None:
    settings = DockerSettings(image="camera:1", createOptions="[" * 100_000)

    with pytest.raises((ValueError, ModelfleetError)):
        settings.create_options_dict()


def test_a_refusal_of_a_malformed_tombstone_names_it_with_the_right_types() -> None:
    raw = _sign_raw({**TOMBSTONE, "name": {"x": 1}, "version": "9"})

    _, verdict = Intake(TOPICS, "dev-1", TRUSTED).evaluate(
        TOPICS.deployment("iris-prod"), _encode(raw), {}, {}
    )

    assert isinstance(verdict, Refused)
    assert verdict.name is None or isinstance(verdict.name, str)
    assert verdict.version is None or type(verdict.version) is int
