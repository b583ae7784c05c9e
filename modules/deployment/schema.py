"""JSON Schema for editors and non-Python tooling: one file covering both document shapes.

`docs/schemas/deployment.schema.json` is generated from the pydantic models by
`python -m modules.deployment.schema > docs/schemas/deployment.schema.json`; a test keeps the
committed file equal to what the models produce.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from modules.deployment._envelope import DeploymentDocument
from modules.deployment._manifest import Manifest

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def document_json_schema() -> dict[str, Any]:
    """The signed deployment envelope, manifest included."""
    schema = DeploymentDocument.model_json_schema(by_alias=True)
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "modelfleet deployment document"
    return schema


def manifest_json_schema() -> dict[str, Any]:
    """A bare manifest: what IoT Edge calls a deployment manifest, with modelfleet's module type."""
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "modelfleet / Azure IoT Edge deployment manifest"
    return schema


def deployment_json_schema() -> dict[str, Any]:
    """Either a deployment document or a bare manifest, sharing one set of definitions."""
    refs, definitions = models_json_schema(
        [(DeploymentDocument, "validation"), (Manifest, "validation")], by_alias=True
    )
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "modelfleet deployment document or manifest",
        "anyOf": [refs[(DeploymentDocument, "validation")], refs[(Manifest, "validation")]],
        **definitions,
    }


def render_deployment_schema() -> str:
    """The exact text of docs/schemas/deployment.schema.json."""
    return json.dumps(deployment_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(render_deployment_schema(), end="")


if __name__ == "__main__":
    main()
