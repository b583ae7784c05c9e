"""The OpenAPI document at `/swagger.json`: Swagger 2.0 by default, OpenAPI 3 on `?version=3`.

Azure ML's server answers version 2 unless asked, and its clients generate code from that, so the
same default is kept; the body and result schemas come from the entry script's decorators or
from the ONNX graph. A document the author wrote and shipped next to the script wins, found
under the names Azure ML's server looks for, so a service moves over with its hand-written API.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("modelfleet.scoring")

# `?version=` values Azure ML's server accepts, and the document each one asks for.
VERSIONS = {"2": "2", "2.0": "2", "3": "3", "3.0": "3", "3.1": "3.1"}
# Files next to the entry script, first found wins, per document; as Azure ML's server reads them
# (so a `swagger3.json` does not answer `?version=3.1`, which is generated unless
# `swagger3.1.json` exists).
_USER_FILES = {"2": ("swagger.json", "swagger2.json"), "3": ("swagger3.json",), "3.1": ("swagger3.1.json",)}


def unknown_version_message(version: str) -> str:
    """Azure ML's words, listing the documents it can give."""
    return f"Swagger version [{version}] is not valid. Supported versions: [2, 3, 3.1]."


def user_documents(folder: Path) -> dict[str, bytes]:
    """The author's documents by version, read once at start-up as Azure ML's server does, and
    written back the way it writes them (parsed, then `json.dumps` with its defaults), so the
    bytes a client receives are the same from both servers. An unreadable file is logged and
    the generated document served instead."""
    found: dict[str, bytes] = {}
    for version, names in _USER_FILES.items():
        for name in names:
            path = folder / name
            if not path.is_file():
                continue
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.error("%s is not a readable JSON document, serving a generated one: %s", path, exc)
                break
            found[version] = json.dumps(document).encode()
            log.info("serving %s for swagger version %s", path, version)
            break
    return found


_ERROR = {"type": "object", "properties": {"message": {"type": "string"}}}
_ANY = {"type": "object", "description": "Not described: run() has no schema decorators."}


def build_document(
    title: str,
    version: str,
    input_schema: dict[str, Any] | None,
    output_schema: dict[str, Any] | None,
    auth: bool,
    openapi_version: str = "2",
) -> dict[str, Any]:
    body = input_schema or _ANY
    result = output_schema or _ANY
    if openapi_version.startswith("3"):
        document = _openapi3(title, version, body, result, auth)
        if openapi_version == "3.1":
            document["openapi"] = "3.1.0"
        return document
    return _swagger2(title, version, body, result, auth)


def _swagger2(
    title: str, version: str, body: dict[str, Any], result: dict[str, Any], auth: bool
) -> dict[str, Any]:
    score: dict[str, Any] = {
        "operationId": "RunMLService",
        "description": "Run the model",
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "parameters": [
            {
                "name": "serviceInputPayload",
                "in": "body",
                "required": True,
                "schema": {"$ref": "#/definitions/ServiceInput"},
            },
        ],
        "responses": {
            "200": {"description": "Success", "schema": {"$ref": "#/definitions/ServiceOutput"}},
            "default": {"description": "Error", "schema": {"$ref": "#/definitions/ErrorResponse"}},
        },
    }
    document: dict[str, Any] = {
        "swagger": "2.0",
        "info": {"title": title, "description": "API for a modelfleet scoring host", "version": version},
        "schemes": ["http"],
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Liveness",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/score": {"post": score},
        },
        "definitions": {"ServiceInput": body, "ServiceOutput": result, "ErrorResponse": _ERROR},
    }
    if auth:
        document["securityDefinitions"] = {
            "Bearer": {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": "Bearer <key>",
            }
        }
        score["security"] = [{"Bearer": []}]
    return document


def _openapi3(
    title: str, version: str, body: dict[str, Any], result: dict[str, Any], auth: bool
) -> dict[str, Any]:
    score: dict[str, Any] = {
        "operationId": "RunMLService",
        "description": "Run the model",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceInput"}}},
        },
        "responses": {
            "200": {
                "description": "Success",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceOutput"}}},
            },
            "default": {
                "description": "Error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            },
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": title, "description": "API for a modelfleet scoring host", "version": version},
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Liveness",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/score": {"post": score},
        },
        "components": {"schemas": {"ServiceInput": body, "ServiceOutput": result, "ErrorResponse": _ERROR}},
    }
    if auth:
        document["components"]["securitySchemes"] = {"Bearer": {"type": "http", "scheme": "bearer"}}
        score["security"] = [{"Bearer": []}]
    return document
