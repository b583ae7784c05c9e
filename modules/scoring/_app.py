"""The aiohttp application: routes, auth, limits, error mapping and metrics in one place.

Every failure leaves through the middleware as a JSON body with the status that names it
(`{"message": ...}` on Azure ML's routes, `{"error": ...}` on the KServe V1 and v2 routes, as
each protocol's clients expect), and every request is counted under its route template.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_response import ContentCoding
from multidict import CIMultiDict

from ._cors import Cors
from ._errors import (
    BadRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RequestHeaderTooLargeError,
    ScoringError,
    ScriptFailedError,
)
from ._host import ScoringHost
from ._openapi import VERSIONS, build_document, unknown_version_message, user_documents
from ._raw_http import AMLRequest, stream_reply
from ._settings import ScoringSettings
from ._v1_protocol import decode_predict, encode_predictions
from ._v2_protocol import HEADER_LENGTH, decode_request, encode_response, model_config, model_metadata

log = logging.getLogger("modelfleet.scoring")
T = TypeVar("T")

HOST_KEY = web.AppKey("scoring_host", ScoringHost)
# Probes must work without a key: the agent checks health, it does not score; and Triton's and
# KServe's clients ask model readiness before they infer. None of them reveals anything.
_PUBLIC_ROUTES = frozenset(
    {
        "/",
        "/ready",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v1/models/{name}",
        "/swagger.json",
    }
)
# Routes whose errors are KServe's `{"error": ...}` (V1 and v2) rather than Azure ML's.
_KSERVE_PREFIXES = ("/v1", "/v2")
# Azure ML's server refuses longer request ids with a 431.
_REQUEST_ID_LIMIT = 100


def _error(status: int, message: str, v2: bool, request_id: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message} if v2 else {"message": message}
    if request_id is not None:
        body["request_id"] = request_id
    # Exactly application/json: KServe's REST client reads an error body only then.
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


class RequestIds:
    """Azure ML's request ids: the server's own, the client's, and the legacy echo of both.

    A plain slotted class: one is made for every request, and a frozen dataclass takes three
    times as long to build (0.38 against 0.13 us)."""

    __slots__ = ("client", "legacy", "request_id")

    def __init__(self, request_id: str, legacy: str, client: str) -> None:
        self.request_id = request_id
        self.legacy = legacy
        self.client = client

    def apply(self, headers: Any, trace_id: str | None) -> None:
        headers["x-request-id"] = self.request_id
        headers["x-ms-request-id"] = self.legacy
        if self.client:
            headers["x-ms-client-request-id"] = self.client
        if trace_id is not None:
            headers["TraceId"] = trace_id  # Office services trace with it; Azure ML echoes it


class RequestIdTooLongError(RequestHeaderTooLargeError):
    """A 431 that still knows the request id when only the client's ids were too long: Azure ML
    answers those with `x-request-id` set, and an over-long `x-request-id` with no id at all."""

    def __init__(self, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.request_id = request_id


class _RequestIdSource:
    """UUID-shaped (version 4) request ids, unique without a system call per request.

    `uuid.uuid4()` reads the kernel's random source for every request; an id only has to be
    unique, so each process draws 74 random bits once and counts in the last 48. A forked
    worker draws its own, so processes sharing a port never hand out the same id.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        drawn = uuid.uuid4().hex
        self._prefix = f"{drawn[:8]}-{drawn[8:12]}-{drawn[12:16]}-{drawn[16:20]}-"
        self._counter = itertools.count(int(drawn[20:], 16))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


new_request_id = _RequestIdSource()


def request_ids(headers: Any) -> RequestIds:
    """The ids as Azure ML's server derives them; an id over 100 characters is a 431."""
    request_id = headers.get("x-request-id") or new_request_id()
    if len(request_id) > _REQUEST_ID_LIMIT:
        raise RequestIdTooLongError(f"x-request-id must not exceed {_REQUEST_ID_LIMIT} characters", None)
    legacy = headers.get("x-ms-request-id", "")
    client = headers.get("x-ms-client-request-id", "")
    if legacy:
        client = client or legacy
    else:
        legacy = client or request_id
    if len(legacy) > _REQUEST_ID_LIMIT or len(client) > _REQUEST_ID_LIMIT:
        raise RequestIdTooLongError(
            f"x-ms-request-id and x-ms-client-request-id must not exceed {_REQUEST_ID_LIMIT} characters",
            request_id,
        )
    return RequestIds(request_id, legacy, client)


# Werkzeug's words for the routing errors, which Azure ML's server passes on as its message.
_ROUTING_MESSAGES = {
    404: "The requested URL was not found on the server. If you entered the URL manually please check "
    "your spelling and try again.",
    405: "The method is not allowed for the requested URL.",
}
# Azure ML's routes, where every answer but liveness says whether run() failed (as its server
# does: all of them are AMLResponses there). The v2 routes are Open Inference Protocol's.
_RUN_FLAG_ROUTES = frozenset({"/score", "/swagger.json", "unmatched"})


_IDS_KEY = web.RequestKey("modelfleet_request_ids", RequestIds)


def create_app(settings: ScoringSettings) -> web.Application:
    """Build the application; the model loads in the background once it starts."""
    host = ScoringHost(settings)
    cors = Cors(settings.cors_origins)
    # aiohttp enforces the limit on chunked bodies; _read_body gives the clear 413 otherwise.
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[_middleware(host, cors)])
    app[HOST_KEY] = host

    async def on_startup(_: web.Application) -> None:
        await host.start()

    async def on_cleanup(_: web.Application) -> None:
        await host.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    _add_azureml_routes(app, host, cors)
    _add_v2_routes(app, host)
    _add_v1_routes(app, host)
    return app


def _middleware(host: ScoringHost, cors: Cors) -> Any:
    details = host.settings.error_details
    gzip_min_bytes = host.settings.gzip_min_bytes

    # Fixed for the host's life: looked up once here rather than on every request.
    cors_enabled = cors.enabled
    auth_enabled = host.auth.enabled
    allows = host.auth.allows
    observe = host.metrics.observe_request
    perf_counter = time.perf_counter

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        started = perf_counter()
        resource = request.match_info.route.resource
        if resource is not None:
            route = resource.canonical
            v2 = route.startswith(_KSERVE_PREFIXES)
        else:
            route = "unmatched"
            v2 = request.path.startswith(_KSERVE_PREFIXES)
        ids: RequestIds | None = None
        headers = request.headers
        try:
            ids = request_ids(headers)
            request[_IDS_KEY] = ids
            if cors_enabled and cors.is_preflight(request) and (auth_enabled or route != "/score"):
                # Browsers send preflights without credentials; with auth on, none reaches run().
                response: web.StreamResponse = cors.preflight(request)
            elif auth_enabled and route not in _PUBLIC_ROUTES and not allows(headers.get("Authorization")):
                response = _error(401, "missing or invalid key", v2)
                response.headers["WWW-Authenticate"] = "Bearer"
            else:
                response = await handler(request)
        except Exception as exc:
            response = error_response(exc, ids, v2, details, request.method, request.path)
        if not response.prepared:
            trace_id = headers.get("TraceId")
            accept_encoding = headers.get("Accept-Encoding")
            finish_response(response, route, v2, ids, trace_id, gzip_min_bytes, accept_encoding)
            if cors_enabled:
                cors.apply(request, response)
        observe(request.method, route, response.status, perf_counter() - started)
        return response

    return middleware


def error_response(
    exc: Exception, ids: RequestIds | None, v2: bool, details: bool, method: str, path: str
) -> web.Response:
    """The answer to a request that raised: the status its error names, in its protocol's words."""
    if isinstance(exc, ScriptFailedError):
        request_id = ids.request_id if ids else None
        log.error("request %s: %s", request_id, exc.message)
        response = _error(500, exc.message if details else exc.public_message, v2, request_id)
        response.headers["x-ms-run-function-failed"] = "True"
    elif isinstance(exc, RequestIdTooLongError):
        response = _error(exc.status, exc.message, v2)
        if exc.request_id is not None:
            response.headers["x-request-id"] = exc.request_id
    elif isinstance(exc, ScoringError):
        response = _error(exc.status, exc.message, v2)
    elif isinstance(exc, web.HTTPException):
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status in _ROUTING_MESSAGES and not v2:
            message = _ROUTING_MESSAGES[exc.status]
        response = _error(exc.status, message or exc.reason, v2)
    else:
        request_id = ids.request_id if ids else None
        log.error("request %s: unexpected error answering %s %s", request_id, method, path, exc_info=exc)
        message = f"internal error: {type(exc).__name__}: {exc}" if details else "internal error"
        response = _error(500, message, v2, request_id)
    return response


def finish_response(
    response: web.StreamResponse,
    route: str,
    v2: bool,
    ids: RequestIds | None,
    trace_id: str | None,
    gzip_min_bytes: int | None,
    accept_encoding: str | None,
) -> None:
    """The headers every answer gets on its way out (CORS aside): gzip, the run-function flag
    on Azure ML's routes, and the request ids."""
    # Streamed answers are left alone: their chunks must leave as the script yields them.
    body = response.body if type(response) is web.Response else None
    if (
        gzip_min_bytes is not None
        and isinstance(body, bytes)
        and gzip_wanted(response.headers, body, accept_encoding, gzip_min_bytes)
    ):
        response.enable_compression(ContentCoding.gzip)
    finish_headers(response.headers, route, v2, response.status, ids, trace_id)


def finish_headers(
    headers: Any, route: str, v2: bool, status: int, ids: RequestIds | None, trace_id: str | None
) -> None:
    """The run-function flag on Azure ML's routes, and the request ids."""
    if route in _RUN_FLAG_ROUTES and not v2 and "x-ms-run-function-failed" not in headers:
        failed = route == "/score" and status >= 500
        headers["x-ms-run-function-failed"] = "True" if failed else "False"
    if ids is not None:
        ids.apply(headers, trace_id)


_COMPRESSIBLE_APPLICATION_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})


def gzip_wanted(headers: Any, body: bytes, accept_encoding: str | None, min_bytes: int) -> bool:
    """True when a body of at least `min_bytes` of text or JSON goes gzipped to this client;
    such a body gets `Vary: Accept-Encoding` either way (caches must not hand gzip to others).

    Smaller bodies gain less than the CPU they cost, and already compressed types (images,
    binary tensors) do not shrink, so both go as they are.
    """
    if len(body) < min_bytes or headers.get("Content-Encoding"):
        return False
    mimetype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if not (
        mimetype.startswith("text/")
        or mimetype in _COMPRESSIBLE_APPLICATION_TYPES
        or mimetype.endswith(("+json", "+xml"))
    ):
        return False
    headers["Vary"] = "Accept-Encoding"
    accepted = (accept_encoding or "").lower()
    return "gzip" in accepted and "gzip;q=0" not in accepted.replace(" ", "")


def decorate(response: web.StreamResponse, request: web.Request, cors: Cors) -> None:
    """Request ids and CORS headers; a streamed response gets them before its first byte."""
    ids = request.get(_IDS_KEY)
    if ids is not None:
        ids.apply(response.headers, request.headers.get("TraceId"))
    cors.apply(request, response)


async def _read_body(request: web.Request, host: ScoringHost) -> bytes:
    limit = host.settings.max_request_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"request body of {length} bytes is over the {limit} byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"request body is over the {limit} byte limit") from None


def _add_azureml_routes(app: web.Application, host: ScoringHost, cors: Cors) -> None:
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

    async def score(request: web.Request) -> web.StreamResponse:
        body = await _read_body(request, host)
        await host.wait_ready()
        if request.method == "OPTIONS" and not host.handler.raw_requests:
            # As Azure ML: only a raw-mode run() sees OPTIONS; others get its empty 200.
            return web.Response(status=200, body=b"", content_type="text/html", charset="utf-8")
        incoming = AMLRequest(request.method, request.path, request.query_string, request.headers, body)
        started = time.perf_counter()
        if host.handler.runs_inline(len(body)):
            reply = await host.handler.score(incoming)
        else:
            reply = await host.within_timeout(host.handler.score(incoming))
        exec_ms = reply.exec_ms if reply.exec_ms is not None else (time.perf_counter() - started) * 1000
        failed = reply.run_function_failed or reply.status_code >= 500
        headers = reply.header_items()
        headers.append(("x-ms-run-function-failed", "True" if failed else "False"))
        # Three decimals, never an exponent, as Azure ML writes it.
        headers.append(("x-ms-run-fn-exec-ms", f"{exec_ms:.3f}"))
        if reply.stream is None:  # aiohttp copies the pairs into its own CIMultiDict
            return web.Response(body=reply.body, status=reply.status_code, headers=headers)
        response = web.StreamResponse(status=reply.status_code, headers=CIMultiDict(headers))
        decorate(response, request, cors)
        await stream_reply(request, response, reply.stream, host.executor)
        return response

    script = host.settings.entry_script
    shipped = user_documents(script.resolve().parent) if script is not None else {}
    # Azure ML's SERVICE_NAME is the deployment's name; the host falls back to the model's.
    title = host.settings.service_name or os.environ.get("SERVICE_NAME") or host.handler.model_name

    async def swagger(request: web.Request) -> web.Response:
        asked = request.query.get("version", "2")
        version = VERSIONS.get(asked)
        if version is None:
            raise ModelNotFoundError(unknown_version_message(asked))
        if version in shipped:
            return web.Response(body=shipped[version], content_type="application/json")
        if host.ready:
            body_schema, result_schema = host.handler.swagger_parts()
        else:
            body_schema = result_schema = None
        document = build_document(
            title, host.settings.model_version, body_schema, result_schema, host.auth.enabled, version
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
    app.router.add_route("OPTIONS", "/score", score)
    app.router.add_get("/swagger.json", swagger)
    app.router.add_get("/metrics", metrics)


# Parsing a large JSON tensor holds the loop for tens of milliseconds: above this it is done on
# an inference thread, so health probes and other clients are answered meanwhile (as zero-code
# /score does).
_INLINE_DECODE_BYTES = 256 * 1024


async def _off_loop_when_large(host: ScoringHost, body: bytes, decode: Callable[..., T], *args: Any) -> T:
    if len(body) <= _INLINE_DECODE_BYTES:
        return decode(*args)
    return await asyncio.get_running_loop().run_in_executor(host.handler.executor, decode, *args)


def _check_model(host: ScoringHost, request: web.Request) -> None:
    """The model (and version) a KServe V1 or v2 route names must be the one this host serves."""
    name = request.match_info["name"]
    if name != host.handler.model_name:
        raise ModelNotFoundError(f"unknown model {name!r}; this host serves {host.handler.model_name!r}")
    version = request.match_info.get("version")
    if version is not None and version != host.settings.model_version:
        raise ModelNotFoundError(f"unknown version {version!r} of model {name!r}")


def _model_readiness(host: ScoringHost) -> web.Response:
    return web.json_response(
        {"name": host.handler.model_name, "ready": host.ready}, status=200 if host.ready else 503
    )


def _add_v2_routes(app: web.Application, host: ScoringHost) -> None:
    def check_model(request: web.Request) -> None:
        _check_model(host, request)

    async def server_metadata(_: web.Request) -> web.Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package_version = version("modelfleet")
        except PackageNotFoundError:
            package_version = "unknown"
        return web.json_response(
            {
                "name": "modelfleet",
                "version": package_version,
                "extensions": ["binary_tensor_data", "classification", "model_configuration"],
            }
        )

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": host.ready}, status=200 if host.ready else 503)

    async def model_ready(request: web.Request) -> web.Response:
        check_model(request)
        return _model_readiness(host)

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
        parsed = await _off_loop_when_large(
            host, body, decode_request, body, request.headers.get(HEADER_LENGTH)
        )
        outputs = await host.within_timeout(host.handler.infer(parsed.inputs))
        batched = (
            frozenset(
                spec.name for spec in host.handler.tensor_specs()[1] if spec.shape and spec.shape[0] is None
            )
            if parsed.classification
            else frozenset()
        )
        payload, headers = encode_response(
            host.handler.model_name, host.settings.model_version, parsed, outputs, batched
        )
        return web.Response(body=payload, headers=headers)

    async def config(request: web.Request) -> web.Response:
        """Triton's model configuration, which tritonclient's `get_model_config` reads (clients
        size their batches from `max_batch_size` and `dims`)."""
        check_model(request)
        await host.wait_ready()
        batching = host.settings.batching
        return web.json_response(
            model_config(
                host.handler.model_name,
                host.handler.platform,
                host.handler.tensor_specs(),
                batching.max_batch_size if batching is not None else None,
            )
        )

    async def statistics(request: web.Request) -> web.Response:
        raise ModelNotFoundError(
            "Triton's statistics extension is not served here: each worker process publishes its "
            "request counts and latency histograms on GET /metrics (Prometheus text)"
        )

    async def model_control(request: web.Request) -> web.Response:
        raise BadRequestError(
            f"this host serves {host.handler.model_name!r}, fixed when it started; models cannot be "
            "loaded or unloaded through it (deploy a new version instead)"
        )

    async def repository_index(request: web.Request) -> web.Response:
        """Triton's repository index: what this host serves, so clients can discover the name."""
        body = await _read_body(request, host)
        ready_only = False
        if body.strip():
            try:
                wanted = json.loads(body)
            except ValueError as exc:
                raise BadRequestError(f"body is not valid JSON: {exc}") from None
            if not isinstance(wanted, dict) or not isinstance(wanted.get("ready", False), bool):
                raise BadRequestError('body must be {"ready": true|false}')
            ready_only = wanted.get("ready", False)
        state = {"loading": "LOADING", "ready": "READY", "failed": "UNAVAILABLE"}[host.state]
        entry: dict[str, Any] = {
            "name": host.handler.model_name,
            "version": host.settings.model_version,
            "state": state,
        }
        if host.error:
            entry["reason"] = host.error
        return web.json_response([entry] if host.ready or not ready_only else [])

    router = app.router
    router.add_post("/v2/repository/index", repository_index)
    router.add_get("/v2", server_metadata)
    router.add_get("/v2/health/live", live)
    router.add_get("/v2/health/ready", ready)
    router.add_get("/v2/models/stats", statistics)  # before /v2/models/{name} would take it
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_get(prefix, metadata)
        router.add_get(prefix + "/ready", model_ready)
        router.add_post(prefix + "/infer", infer)
        router.add_get(prefix + "/config", config)
        router.add_get(prefix + "/stats", statistics)
    router.add_post("/v2/repository/models/{name}/load", model_control)
    router.add_post("/v2/repository/models/{name}/unload", model_control)


# The name stops at a colon: `/v1/models/cnn:predict` is the predict verb on `cnn`, and the
# readiness route must not read it as a model called `cnn:predict` (KServe's model names are DNS
# labels, so a name with a colon in it is out of V1's reach there too).
_V1_MODEL = "/v1/models/{name:[^/:]+}"


def _add_v1_routes(app: web.Application, host: ScoringHost) -> None:
    """KServe's V1 protocol, which `kserve.InferenceRESTClient` speaks unless told otherwise."""

    def check_model(request: web.Request) -> None:
        _check_model(host, request)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"models": [host.handler.model_name]})

    async def model_ready(request: web.Request) -> web.Response:
        check_model(request)
        return _model_readiness(host)

    async def predict(request: web.Request) -> web.Response:
        check_model(request)
        body = await _read_body(request, host)
        await host.wait_ready()
        parsed = await _off_loop_when_large(host, body, decode_predict, body, host.handler.tensor_specs()[0])
        outputs = await host.within_timeout(host.handler.infer(parsed.inputs))
        return web.Response(body=encode_predictions(parsed, outputs), content_type="application/json")

    router = app.router
    router.add_get("/v1/models", models)
    router.add_get(_V1_MODEL, model_ready)
    router.add_post(_V1_MODEL + ":predict", predict)
