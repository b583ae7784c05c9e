"""Small builders for deployment documents, so each test states only what it is about."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modules.deployment import DeploymentDocument

IRIS_DIGEST = "sha256:" + "ab" * 32
CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def modelfleet_module(module: str = "modules/iris-svc", digest: str = IRIS_DIGEST, **extra: Any) -> dict:
    return {
        "version": "3",
        "type": "modelfleet",
        "status": "running",
        "restartPolicy": "on-unhealthy",
        "startupOrder": 1,
        "env": {"LOG_LEVEL": {"value": "info"}},
        "settings": {
            "module": module,
            "digest": digest,
            "port": 5001,
            "executionProviders": ["cuda", "cpu"],
            **extra,
        },
    }


def manifest(modules: dict[str, dict] | None = None, routes: dict | None = None, **twins: dict) -> dict:
    content: dict[str, Any] = {
        "$edgeAgent": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "process"},
                "modules": modules if modules is not None else {"iris": modelfleet_module()},
            }
        }
    }
    if routes is not None:
        content["$edgeHub"] = {"properties.desired": {"schemaVersion": "1.1", "routes": routes}}
    for name, desired in twins.items():
        content[name] = {"properties.desired": desired}
    return {"modulesContent": content}


def document(name: str = "iris-prod", version: int = 1, **fields: Any) -> DeploymentDocument:
    data: dict[str, Any] = {
        "fleet": "factory",
        "name": name,
        "version": version,
        "targetCondition": "tags.site = 'plant-1'",
        "content": manifest(),
        "createdAt": CREATED,
    }
    data.update(fields)
    return DeploymentDocument.model_validate(data)
