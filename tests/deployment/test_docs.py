"""The examples in docs/manifest.md are real: they parse, round-trip and verify."""

from __future__ import annotations

import json
import re
from pathlib import Path

from modules.deployment import DeploymentDocument, Manifest, parse_condition, verify_document
from modules.signing import load_public_key

DOC = (Path(__file__).parents[2] / "docs" / "manifest.md").read_text()
JSON_BLOCKS = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC, re.S)]


def test_plain_iot_edge_example_round_trips() -> None:
    manifest = JSON_BLOCKS[0]

    assert Manifest.model_validate(manifest).to_json_dict() == manifest


def test_deployment_document_example_verifies_with_the_documented_key() -> None:
    key = load_public_key(re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", DOC, re.S)[0])
    raw = JSON_BLOCKS[1]

    assert verify_document(raw, [key]) == raw["signature"]["keyId"]
    assert verify_document(DeploymentDocument.model_validate(raw), [key]) == raw["signature"]["keyId"]


def test_condition_examples_parse() -> None:
    section = DOC.split("## Target conditions", 1)[1].split("Evaluation never fails", 1)[0]
    examples = re.findall(r"```\n(.*?)```", section, re.S)[1]

    for line in examples.strip().splitlines():
        parse_condition(line)
