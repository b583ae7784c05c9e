"""The aiohttp application: routes, auth, limits, error mapping and metrics in one place.

Every failure leaves through the middleware as a JSON body with the status that names it
(`{"message": ...}` on Azure ML's routes, `{"error": ...}` on the v2 routes, as each protocol's
clients expect), and every request is counted under its route template.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web

from ._errors import ModelNotFoundError, PayloadTooLargeError, ScoringError
from ._host import ScoringHost
from ._openapi import build_document
from ._raw_http import AMLRequest
from ._settings import ScoringSettings
from ._v2_protocol import HEADER_LENGTH, decode_request, encode_response, model_metadata

log = logging.getLogger("modelfleet.scoring")

HOST_KEY = web.AppKey("scoring_host", ScoringHost)
# Probes must work without a key: the agent checks health, it does not score.
_PUBLIC_ROUTES = frozenset({"/", "/ready", "/v2/health/live", "/v2/health/ready", "/swagger.json"})


def _error(status: int, message: str, v2: bool) -> web.Response:
    body = {"error": message} if v2 else {"message": message}
    return web.json_response(body, status=status)


def create_app(settings: ScoringSettings) -> web.Application:
    """Build the application; the model loads in the background once it starts."""
    host = ScoringHost(settings)
    # aiohttp enforces the limit on chunked bodies; _read_body gives the clear 413 otherwise.
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[_middleware(host)])
    app[HOST_KEY] = host

    async def on_startup(_: web.Application) -> None:
        await host.start()

    async def on_cleanup(_: web.Application) -> None:
        await host.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    _add_azureml_routes(app, host)
    _add_v2_routes(app, host)
    return app


def _middleware(host: ScoringHost) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        v2 = request.path.startswith("/v2")
        try:
            if route not in _PUBLIC_ROUTES and not host.auth.allows(request.headers.get("Authorization")):
                response: web.StreamResponse = _error(401, "missing or invalid key", v2)
                response.headers["WWW-Authenticate"] = "Bearer"
            else:
                response = await handler(request)
        except ScoringError as exc:
            response = _error(exc.status, exc.message, v2)
        except web.HTTPException as exc:
            message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            response = _error(exc.status, message or exc.reason, v2)
        except Exception as exc:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            response = _error(500, f"internal error: {type(exc).__name__}: {exc}", v2)
        host.metrics.observe_request(request.method, route, response.status, time.perf_counter() - started)
        return response

    return middleware


async def _read_body(request: web.Request, host: ScoringHost) -> bytes:
    limit = host.settings.max_request_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"request body of {length} bytes is over the {limit} byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"request body is over the {limit} byte limit") from None


def _add_azureml_routes(app: web.Application, host: ScoringHost) -> None:
    async def liveness(_: web.Request) -> web.Response:
        status = {"loading": "Initializing", "ready": "Healthy", "failed": "Unhealthy"}[host.state]
        details: dict[str, Any] = {
            "status": status,
            "ready": host.ready,
            "model": host.handler.model_name,
        }
        if host.error:
            details["error"] = host.error
        return web.json_response(details)

    async def readiness(_: web.Request) -> web.Response:
        if host.ready:
            return web.json_response({"ready": True})
        body: dict[str, Any] = {"ready": False, "state": host.state}
        if host.error:
            body["error"] = host.error
        return web.json_response(body, status=503)

    async def score(request: web.Request) -> web.Response:
        body = await _read_body(request, host)
        await host.wait_ready()
        incoming = AMLRequest(request.method, request.path, request.query_string, request.headers, body)
        reply = await host.within_timeout(host.handler.score(incoming))
        return web.Response(body=reply.body, status=reply.status_code, headers=reply.headers)

    async def swagger(request: web.Request) -> web.Response:
        version = request.query.get("version", "2")
        if host.ready:
            body_schema, result_schema = host.handler.swagger_parts()
        else:
            body_schema = result_schema = None
        document = build_document(
            host.handler.model_name,
            host.settings.model_version,
            body_schema,
            result_schema,
            host.auth.enabled,
            version,
        )
        return web.json_response(document, dumps=lambda d: json.dumps(d, default=str))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            text=host.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Prometheus-Format": "0.0.4"},
        )

    app.router.add_get("/", liveness)
    app.router.add_get("/ready", readiness)
    app.router.add_post("/score", score)
    app.router.add_get("/score", score)
    app.router.add_get("/swagger.json", swagger)
    app.router.add_get("/metrics", metrics)


def _add_v2_routes(app: web.Application, host: ScoringHost) -> None:
    def check_model(request: web.Request) -> None:
        name = request.match_info["name"]
        if name != host.handler.model_name:
            raise ModelNotFoundError(f"unknown model {name!r}; this host serves {host.handler.model_name!r}")
        version = request.match_info.get("version")
        if version is not None and version != host.settings.model_version:
            raise ModelNotFoundError(f"unknown version {version!r} of model {name!r}")

    async def server_metadata(_: web.Request) -> web.Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package_version = version("modelfleet")
        except PackageNotFoundError:
            package_version = "unknown"
        return web.json_response(
            {"name": "modelfleet", "version": package_version, "extensions": ["binary_tensor_data"]}
        )

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": host.ready}, status=200 if host.ready else 503)

    async def model_ready(request: web.Request) -> web.Response:
        check_model(request)
        return web.json_response(
            {"name": host.handler.model_name, "ready": host.ready},
            status=200 if host.ready else 503,
        )

    async def metadata(request: web.Request) -> web.Response:
        check_model(request)
        await host.wait_ready()
        return web.json_response(
            model_metadata(
                host.handler.model_name,
                host.settings.model_version,
                host.handler.platform,
                host.handler.tensor_specs(),
            )
        )

    async def infer(request: web.Request) -> web.Response:
        check_model(request)
        body = await _read_body(request, host)
        await host.wait_ready()
        parsed = decode_request(body, request.headers.get(HEADER_LENGTH))
        outputs = await host.within_timeout(host.handler.infer(parsed.inputs))
        payload, headers = encode_response(
            host.handler.model_name, host.settings.model_version, parsed, outputs
        )
        return web.Response(body=payload, headers=headers)

    router = app.router
    router.add_get("/v2", server_metadata)
    router.add_get("/v2/health/live", live)
    router.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_get(prefix, metadata)
        router.add_get(prefix + "/ready", model_ready)
        router.add_post(prefix + "/infer", infer)
