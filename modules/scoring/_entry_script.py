"""Azure ML's entry-script contract: `init()` once, `run()` per request.

How `run()` is called follows Azure ML's scoring server so scripts move over unchanged: with the
body as a JSON string; with the request object when decorated with `@rawhttp`; with the body's
fields as keyword arguments, converted by their schema, when decorated with `@input_schema`; and
with `request_headers=` when it declares that parameter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .._errors import ConfigError
from . import _json as fast_json
from . import _script_json
from ._azureml_model import MODELS_ROOT_ENV
from ._errors import BadRequestError, RunFailedError, ScoringError, ScriptFailedError
from ._handler import Handler, json_reply
from ._raw_http import AMLRequest, AMLResponse, install_azureml_aliases, wants_raw_request
from ._schema import RunSchema, schema_of
from ._tensors import TensorSpec, numpy_to_v2

log = logging.getLogger("modelfleet.scoring")
_module_numbers = itertools.count(1)
_HEADERS_PARAM = "request_headers"


def load_script(path: os.PathLike[str] | str) -> ModuleType:
    """Import a script by path under a fresh module name (scripts may be loaded more than once)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"entry script {path} does not exist")
    install_azureml_aliases()
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # scripts import their sibling modules, as under Azure ML
    name = f"modelfleet_entry_script_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class EntryScriptHandler(Handler):
    def load(self) -> None:
        model_dir = str(self.settings.model_dir.resolve())
        os.environ["AZUREML_MODEL_DIR"] = model_dir
        os.environ["MODELFLEET_MODEL_DIR"] = model_dir
        models_root = self.settings.models_root or self.settings.model_dir
        os.environ[MODELS_ROOT_ENV] = str(models_root.resolve())
        assert self.settings.entry_script is not None
        # as Azure ML's server sets it, for scripts that find their own files from it
        os.environ["AZUREML_ENTRY_SCRIPT"] = os.path.realpath(self.settings.entry_script)
        module = load_script(self.settings.entry_script)
        if _script_json.accelerate(module):
            log.info(
                "json.loads goes through orjson where it answers the same (%s=stdlib: off)",
                _script_json.SWITCH,
            )
        for name in ("init", "run"):
            if not callable(getattr(module, name, None)):
                raise ConfigError(f"entry script {module.__file__} has no {name}() function")
        self._run: Callable[..., Any] = module.run
        self._raw = wants_raw_request(module.run)
        self.raw_requests = self._raw
        self._schema: RunSchema | None = None if self._raw else schema_of(module.run)
        target = self._schema.target if self._schema else module.run
        parameters = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        self._wants_headers = any(p.name == _HEADERS_PARAM for p in parameters)
        self._parameters = [p for p in parameters if p.name != _HEADERS_PARAM]
        if not self._parameters:
            raise ConfigError("run() needs a parameter for its input")
        mode = "raw request" if self._raw else "schema" if self._schema else "JSON string"
        log.info("entry script %s loaded; run() takes the %s", module.__file__, mode)
        module.init()
        log.info("init() completed")

    async def close(self) -> None:
        _script_json.restore()  # for hosts embedded in a longer-lived process

    async def score(self, request: AMLRequest) -> AMLResponse:
        return await self.offload(self._score_sync, request, len(request.data))

    def score_now(self, request: AMLRequest) -> AMLResponse:
        """Answer on the event loop, now: only right after `runs_inline()` said so."""
        return self._run_on_loop(self._score_sync, request)

    def _score_sync(self, request: AMLRequest) -> AMLResponse:
        # Parsing and conversion run here too: big bodies must not stall the event loop.
        if self._raw:
            kwargs: dict[str, Any] = {self._parameters[0].name: request}
            call = self._run
        elif self._schema is not None:
            kwargs = self._schema.convert(self._schema_arguments(request))
            call = self._schema.target
        else:
            kwargs = {self._parameters[0].name: self._json_string(request)}
            call = self._run
        if self._wants_headers:
            kwargs[_HEADERS_PARAM] = dict(request.headers)
        started = time.perf_counter()
        try:
            result = self._call(call, kwargs)
        finally:
            fast_json.forget_utf8()
        exec_ms = (time.perf_counter() - started) * 1000
        if isinstance(result, AMLResponse):
            reply = result
        elif hasattr(result, "status_code") and hasattr(result, "get_data"):
            reply = _foreign_response(result)  # a Flask response from the real azureml package
        else:
            reply = json_reply(result)
        reply.exec_ms = exec_ms
        return reply

    def _call(self, call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        try:
            return call(**kwargs)
        except ScoringError:
            raise
        except Exception as exc:
            log.exception("run() raised")
            raise ScriptFailedError(f"run() failed: {type(exc).__name__}: {exc}") from None

    def _json_string(self, request: AMLRequest) -> str:
        if request.method == "GET":
            return json.dumps(_query_document(request))
        try:
            text = request.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"Input cannot be decoded as UTF-8: {exc}") from None
        fast_json.known_utf8(text, request.data)  # the script's json.loads(text) reads these bytes
        return text

    def _schema_arguments(self, request: AMLRequest) -> dict[str, Any]:
        if request.method == "GET":
            body: Any = _query_document(request)
        else:
            body = _schema_body(request.data)
        arguments: dict[str, Any] = {}
        for parameter in self._parameters:
            if parameter.name in body:
                arguments[parameter.name] = body[parameter.name]
            elif parameter.default is not inspect.Parameter.empty:
                arguments[parameter.name] = parameter.default
            else:
                raise BadRequestError(f"A value is not provided for the {parameter.name!r} parameter.")
        return arguments

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._raw:
            raise BadRequestError("this entry script takes raw requests; use POST /score")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._infer_sync, inputs)

    def _infer_sync(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._schema is not None:
            names = {p.name for p in self._parameters}
            unknown = sorted(set(inputs) - names)
            if unknown:
                raise BadRequestError(f"run() has no input named {unknown[0]!r}")
            arguments: dict[str, Any] = dict(inputs)
            for parameter in self._parameters:
                if parameter.name not in arguments:
                    if parameter.default is inspect.Parameter.empty:
                        raise BadRequestError(f"missing input {parameter.name!r}")
                    arguments[parameter.name] = parameter.default
            kwargs = self._schema.convert(arguments)
            call = self._schema.target
        else:
            try:
                body = json.dumps({name: array.tolist() for name, array in inputs.items()})
            except TypeError:  # BYTES elements that are not UTF-8 text have no JSON form
                raise BadRequestError("BYTES inputs must be UTF-8 text for a run() that takes JSON") from None
            kwargs = {self._parameters[0].name: body}
            call = self._run
        if self._wants_headers:
            kwargs[_HEADERS_PARAM] = {}
        result = self._call(call, kwargs)
        if isinstance(result, AMLResponse):
            raise RunFailedError("run() returned an HTTP response; use POST /score")
        try:
            if isinstance(result, dict):
                return {str(key): np.asarray(value) for key, value in result.items()}
            return {"output0": np.asarray(result)}
        except (ValueError, TypeError) as exc:
            raise RunFailedError(f"run() result is not a tensor: {exc}") from None

    def swagger_parts(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self._schema is None:
            return None, None
        return self._schema.input_swagger, self._schema.output_swagger

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        specs: list[TensorSpec] = []
        if self._schema is not None:
            for name, param in self._schema.inputs.items():
                sample = getattr(param.param_type, "sample_input", None)
                if isinstance(sample, np.ndarray):
                    shape = (None, *sample.shape[1:]) if sample.ndim else ()
                    specs.append(TensorSpec(name, numpy_to_v2(sample.dtype), shape))
        return specs, []


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise BadRequestError("body is empty; expected a JSON object")
    try:
        value = fast_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"body must be a JSON object, got {type(value).__name__}")
    return value


def _schema_body(body: bytes) -> dict[str, Any]:
    """The body of a schema-decorated run(), refused in Azure ML's server's own words: clients
    and their tests written against it match on these messages."""
    if not body:
        raise BadRequestError("POST body is empty. Expecting a JSON dictionary.")
    try:
        value = fast_json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"POST body could not be decoded as JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # Azure ML: an unhandled 500; the body is the client's fault
        raise BadRequestError(f"Input cannot be decoded as UTF-8: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError("POST body should be a JSON dictionary.")
    return value


def _query_document(request: AMLRequest) -> dict[str, Any]:
    """The query as Azure ML hands it to run(): each value parsed as JSON where it is JSON, and
    a key given more than once as the list of its values."""
    args = request.args
    document: dict[str, Any] = {}
    for key in dict.fromkeys(args.keys()):
        values = args.getall(key)
        document[key] = _maybe_json(values[0]) if len(values) == 1 else [_maybe_json(v) for v in values]
    return document


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _foreign_response(response: Any) -> AMLResponse:
    reply = AMLResponse(response.get_data(), int(response.status_code), list(response.headers.items()))
    return reply
