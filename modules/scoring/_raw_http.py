"""Raw HTTP mode: `run()` sees the whole request and may answer with a whole response.

Scripts written for Azure ML import `rawhttp`, `AMLRequest` and `AMLResponse` from
`azureml.contrib.services`. Those names are provided here with the attributes such scripts use
(a subset of Flask's request/response), and registered under Azure's module names when the real
packages are not installed, so the scripts run unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from . import _json as fast_json

_RAW_ATTR = "__modelfleet_rawhttp__"
_AZURE_REQUEST_MODULES = (
    "azureml.contrib.services.aml_request",
    "azureml_inference_server_http.api.aml_request",
)

# Azure ML's module keeps a global flag instead of marking the function; mirrored for scripts
# that look at it.
_rawHttpRequested = False


def rawhttp(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark `run` as wanting the request object rather than the parsed body."""
    global _rawHttpRequested
    _rawHttpRequested = True
    setattr(func, _RAW_ATTR, True)
    return func


def wants_raw_request(func: Callable[..., Any]) -> bool:
    if getattr(func, _RAW_ATTR, False):
        return True
    # A script that imported the real azureml package: its decorator only sets a global flag.
    for name in _AZURE_REQUEST_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "_rawHttpRequested", False):
            return True
    return False


class AMLRequest:
    """The request as `run()` sees it in raw mode; names follow Flask's `Request`."""

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        self.method = method
        self.path = path
        self._query = query_string
        # aiohttp's headers are already an immutable case-insensitive view: no copy needed.
        self.headers = (
            headers if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers))
        )
        self._args: MultiDict[str] | None = None
        self._body = body

    @property
    def query_string(self) -> bytes:
        return self._query.encode()

    @property
    def args(self) -> MultiDict[str]:
        # Parsed on first use: most scripts never look at the query.
        if self._args is None:
            self._args = MultiDict(parse_qsl(self._query, keep_blank_values=True))
        return self._args

    @property
    def full_path(self) -> str:
        return f"{self.path}?{self.query_string.decode()}"

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def mimetype(self) -> str:
        return self.content_type.split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int:
        return len(self._body)

    @property
    def is_json(self) -> bool:
        mimetype = self.mimetype
        return mimetype == "application/json" or mimetype.endswith("+json")

    @property
    def data(self) -> bytes:
        return self._body

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False):
        return self._body.decode("utf-8", "replace") if as_text else self._body

    def get_json(self, force: bool = False, silent: bool = False) -> Any:
        if not (force or self.is_json):
            if silent:
                return None
            raise ValueError("request Content-Type is not application/json")
        try:
            return fast_json.loads(self._body)
        except ValueError:
            if silent:
                return None
            raise

    @property
    def json(self) -> Any:
        return self.get_json()


class AMLResponse:
    """A full response from `run()`; same constructor as Azure ML's."""

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: Mapping[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        headers = dict(response_headers or {})
        if message is None:
            body: bytes = b"{}"
            headers.setdefault("Content-Type", "application/json")
        elif json_str:
            body = json.dumps(message).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(message, bytes | bytearray):
            body = bytes(message)
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            body = str(message).encode()
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
        self.status_code = int(status_code)
        self.headers = headers
        self.body = body
        self.run_function_failed = run_function_failed

    def get_data(self) -> bytes:
        return self.body


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def install_azureml_aliases() -> None:
    """Let `from azureml.contrib.services.aml_request import rawhttp` work without azureml.

    Only names that do not resolve already are registered: a real installation always wins.
    """
    request_attrs = {"AMLRequest": AMLRequest, "rawhttp": rawhttp, "_rawHttpRequested": False}
    response_attrs = {"AMLResponse": AMLResponse}
    for package in ("azureml.contrib.services", "azureml_inference_server_http.api"):
        if _resolves(f"{package}.aml_request"):
            continue
        parts = package.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                stub = _module(name)
                stub.__path__ = []  # a package, so submodules can hang under it
                sys.modules[name] = stub
        sys.modules[f"{package}.aml_request"] = _module(f"{package}.aml_request", **request_attrs)
        sys.modules[f"{package}.aml_response"] = _module(f"{package}.aml_response", **response_attrs)
        for depth in range(1, len(parts)):
            parent = sys.modules[".".join(parts[:depth])]
            setattr(parent, parts[depth], sys.modules[".".join(parts[: depth + 1])])
        services = sys.modules[package]
        services.aml_request = sys.modules[f"{package}.aml_request"]
        services.aml_response = sys.modules[f"{package}.aml_response"]


def _resolves(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
