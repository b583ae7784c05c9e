"""The OpenAPI document at `/swagger.json`: Swagger 2.0 by default, OpenAPI 3 on `?version=3`.

Azure ML's server answers version 2 unless asked, and its clients generate code from that, so the
same default is kept; the body and result schemas come from the entry script's decorators or
from the ONNX graph.
"""

from __future__ import annotations

from typing import Any

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
        return _openapi3(title, version, body, result, auth)
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
        "openapi": "3.0.1",
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
