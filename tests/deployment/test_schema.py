from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from modules.deployment import DeploymentDocument
from modules.deployment.schema import document_json_schema, manifest_json_schema, render_deployment_schema
from tests.deployment._factories import document

COMMITTED = Path(__file__).parents[2] / "docs" / "schemas" / "deployment.schema.json"


def test_committed_schema_equals_the_generated_one() -> None:
    assert COMMITTED.read_text() == render_deployment_schema(), (
        "regenerate: python -m modules.deployment.schema > docs/schemas/deployment.schema.json"
    )


def test_schemas_use_the_wire_names() -> None:
    document_schema = json.dumps(document_json_schema())
    manifest_schema = json.dumps(manifest_json_schema())

    for name in ("targetCondition", "createdAt", "keyId", "currentStep"):
        assert f'"{name}"' in document_schema
    for name in ("modulesContent", "$edgeAgent", "properties.desired", "schemaVersion", "restartPolicy"):
        assert f'"{name}"' in manifest_schema


def test_document_round_trips_through_its_wire_form() -> None:
    doc = document(priority=3, rollout={"steps": [10, 100]})

    assert DeploymentDocument.model_validate_json(json.dumps(doc.to_json_dict())) == doc


@pytest.mark.parametrize(
    "change",
    [
        {"version": 0},
        {"targetCondition": "tags.site = "},
        {"createdAt": "2024-05-01T12:00:00"},
        {"name": "Not A Name"},
        {"unexpected": 1},
    ],
)
def test_invalid_envelope_is_refused(change: dict) -> None:
    data = document().to_json_dict() | change

    with pytest.raises(ValidationError):
        DeploymentDocument.model_validate(data)
