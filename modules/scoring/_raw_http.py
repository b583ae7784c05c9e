"""Raw HTTP mode: `run()` sees the whole request and may answer with a whole response.

Scripts written for Azure ML import `rawhttp`, `AMLRequest` and `AMLResponse` from
`azureml.contrib.services`. Those names are provided here with the attributes such scripts use
(a subset of Flask's request/response), and registered under Azure's module names when the real
packages are not installed, so the scripts run unchanged.
"""

from __future__ import annotations

import asyncio
import email.policy
import importlib.util
import inspect
import io
import json
import logging
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from . import _json as fast_json
from ._errors import RunFailedError

log = logging.getLogger("modelfleet.scoring")
_RAW_ATTR = "__modelfleet_rawhttp__"
# What aiohttp refuses to send in a header (tab aside).
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
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


class WerkzeugMultiDict(MultiDict):  # type: ignore[type-arg]
    """`args`, `form` and `files` with the Werkzeug methods scripts call on them."""

    def getlist(self, key: str, type: Callable[[Any], Any] | None = None) -> list[Any]:
        values = self.getall(key, [])
        if type is None:
            return values
        converted = []
        for value in values:
            try:
                converted.append(type(value))
            except ValueError:
                continue
        return converted

    def get(self, key: str, default: Any = None, type: Callable[[Any], Any] | None = None) -> Any:  # type: ignore[override]
        value = super().get(key, default) if key in self else default
        if type is None or key not in self:
            return value
        try:
            return type(value)
        except ValueError:
            return default

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        if flat:
            return {key: self.getone(key) for key in dict.fromkeys(self.keys())}
        return {key: self.getall(key) for key in dict.fromkeys(self.keys())}


def _wsgi_pairs(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """(name, value) pairs as a script under Azure ML's server sees them: gunicorn joins a
    repeated header with commas into one WSGI variable, and Werkzeug names it back in title case
    (`x-caller` arrives as `X-Caller`), so `dict(request.headers)["X-Caller"]` works there."""
    merged: dict[str, str] = {}
    for name, value in headers.items():
        key = name.title()
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return list(merged.items())


class RequestHeaders:
    """The request headers as Flask's `EnvironHeaders` behaves: case-insensitive lookups, and
    iteration over (name, value) pairs named as Werkzeug names them, which scripts that copy or
    log headers rely on."""

    __slots__ = ("_headers", "_pairs")

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self._headers = headers
        self._pairs: list[tuple[str, str]] | None = None

    def _wsgi(self) -> list[tuple[str, str]]:
        if self._pairs is None:  # built on first use: most scripts only look headers up
            self._pairs = _wsgi_pairs(self._headers)
        return self._pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._wsgi())

    def __len__(self) -> int:
        return len(self._wsgi())

    def __getitem__(self, name: str) -> str:
        values = self._headers.getall(name)  # KeyError when absent, as Werkzeug's
        return values[0] if len(values) == 1 else ",".join(values)

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def get(self, name: str, default: Any = None, type: Callable[[str], Any] | None = None) -> Any:
        values = self._headers.getall(name, None)
        if values is None:
            return default
        value = values[0] if len(values) == 1 else ",".join(values)  # one WSGI variable under gunicorn
        if type is None:
            return value
        try:
            return type(value)
        except ValueError:
            return default

    def getlist(self, name: str) -> list[str]:
        return self._headers.getall(name, [])

    get_all = getlist

    def keys(self) -> Iterator[str]:
        return (name for name, _ in self._wsgi())

    def values(self) -> Iterator[str]:
        return (value for _, value in self._wsgi())

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._wsgi())

    def to_wsgi_list(self) -> list[tuple[str, str]]:
        return list(self._wsgi())

    def __repr__(self) -> str:
        return f"RequestHeaders({self._wsgi()!r})"


class FileStorage:
    """One uploaded file of a multipart body, as Werkzeug's: a readable file object with a name."""

    def __init__(self, data: bytes, name: str, filename: str | None, content_type: str | None) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.stream = io.BytesIO(data)

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self.stream.readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def save(self, dst: Any) -> None:
        data = self.stream.getvalue()
        if hasattr(dst, "write"):
            dst.write(data)
        else:
            with open(dst, "wb") as out:
                out.write(data)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)

    def __bool__(self) -> bool:
        return bool(self.filename)

    def __repr__(self) -> str:
        return f"<FileStorage: {self.filename!r} ({self.content_type!r})>"


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
        proxy = headers if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers))
        self.headers = RequestHeaders(proxy)
        self._args: WerkzeugMultiDict | None = None
        self._form: tuple[WerkzeugMultiDict, WerkzeugMultiDict] | None = None
        self._body = body

    @property
    def query_string(self) -> bytes:
        return self._query.encode()

    @property
    def args(self) -> WerkzeugMultiDict:
        # Parsed on first use: most scripts never look at the query.
        if self._args is None:
            self._args = WerkzeugMultiDict(parse_qsl(self._query, keep_blank_values=True))
        return self._args

    @property
    def full_path(self) -> str:
        return f"{self.path}?{self.query_string.decode()}"

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")  # None when not sent, as Flask's

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

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

    @property
    def form(self) -> WerkzeugMultiDict:
        """Fields of a `multipart/form-data` or `application/x-www-form-urlencoded` body."""
        return self._parsed_form()[0]

    @property
    def files(self) -> WerkzeugMultiDict:
        """Uploaded files of a `multipart/form-data` body, by field name."""
        return self._parsed_form()[1]

    @property
    def values(self) -> WerkzeugMultiDict:
        combined = WerkzeugMultiDict(self.args)
        combined.extend(self.form)
        return combined

    def _parsed_form(self) -> tuple[WerkzeugMultiDict, WerkzeugMultiDict]:
        if self._form is None:
            self._form = parse_form(self.content_type or "", self._body)
        return self._form


def parse_form(content_type: str, body: bytes) -> tuple[WerkzeugMultiDict, WerkzeugMultiDict]:
    """Form fields and files, parsed the way Werkzeug's form parser fills `form` and `files`."""
    fields = WerkzeugMultiDict()
    files = WerkzeugMultiDict()
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype == "application/x-www-form-urlencoded":
        fields.extend(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif mimetype == "multipart/form-data" and body:
        # The email package parses MIME multipart bodies, boundaries and encodings included.
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name is None:
                    continue
                payload = part.get_payload(decode=True) or b""
                filename = part.get_filename()
                if filename is not None:
                    part_type = part.get("Content-Type")
                    files.add(str(name), FileStorage(payload, str(name), filename, part_type))
                else:
                    charset = part.get_content_charset() or "utf-8"
                    fields.add(str(name), payload.decode(charset, "replace"))
    return fields, files


# Text types whose Content-Type gets a charset when a script sets `mimetype`, as Werkzeug does.
_CHARSET_MIMETYPES = frozenset(
    {
        "application/ecmascript",
        "application/javascript",
        "application/sql",
        "application/xml",
        "application/xml-dtd",
        "application/xml-external-parsed-entity",
    }
)


def _content_type_for(mimetype: str) -> str:
    if mimetype.startswith("text/") or mimetype in _CHARSET_MIMETYPES or mimetype.endswith("+xml"):
        return f"{mimetype}; charset=utf-8"
    return mimetype


class AMLResponse:
    """A full response from `run()`; same constructor as Azure ML's, and the parts of Flask's
    `Response` scripts touch: `headers` (case-insensitive, `add`), `mimetype`, `content_type`,
    `status_code`, `get_data()`. A generator or other iterator as the message is streamed."""

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: Mapping[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        headers: CIMultiDict[str] = CIMultiDict(response_headers or {})
        self.stream: Iterator[Any] | None = None
        if message is None:
            body: bytes = b"{}"
            headers.setdefault("Content-Type", "application/json")
        elif json_str:
            body = json.dumps(message).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(message, bytes | bytearray):
            body = bytes(message)
            # Flask's default for any body, bytes included; scripts set their own type.
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
        elif isinstance(message, str):
            body = message.encode()
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
        elif isinstance(message, Iterator) or inspect.isgenerator(message):
            body = b""
            self.stream = message
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
        else:
            body = str(message).encode()
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
        self.status_code = int(status_code)
        self.headers = headers
        self.body = body
        self.run_function_failed = run_function_failed
        # How long run() took, in ms, when the handler measured it (x-ms-run-fn-exec-ms).
        self.exec_ms: float | None = None
        # Set by the host for a reply it wrote itself from run()'s JSON-serialisable result: a
        # JSON body and exactly the default Content-Type header.
        self.json_only = False

    @property
    def status(self) -> str:
        return str(self.status_code)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers["Content-Type"] = value

    @property
    def mimetype(self) -> str:
        return self.content_type.split(";", 1)[0].strip().lower()

    @mimetype.setter
    def mimetype(self, value: str) -> None:
        self.headers["Content-Type"] = _content_type_for(value)

    @property
    def is_streamed(self) -> bool:
        return self.stream is not None

    @property
    def data(self) -> bytes:
        return self.get_data()

    def get_data(self, as_text: bool = False) -> Any:
        if self.stream is not None:  # consumed, as Flask does when asked for the whole body
            self.body = b"".join(_chunk_bytes(chunk) for chunk in self.stream)
            self.stream = None
        return self.body.decode("utf-8", "replace") if as_text else self.body

    def set_data(self, value: str | bytes) -> None:
        self.body = value.encode() if isinstance(value, str) else bytes(value)
        self.stream = None

    def header_items(self) -> list[tuple[str, str]]:
        """Headers to send; framing headers are the server's to write, not the script's. A
        control character in one (a line break would start a header of the script's making)
        fails the run, in words, rather than the connection."""
        items = [
            (name, str(value))
            for name, value in self.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding")
        ]
        if _HEADER_CONTROL.search("\t".join(f"{name}\t{value}" for name, value in items)) is not None:
            bad = next(name for name, value in items if _HEADER_CONTROL.search(f"{name}\t{value}"))
            raise RunFailedError(f"run() returned a response header with a control character: {bad!r}")
        return items


def _chunk_bytes(chunk: Any) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)


async def stream_reply(
    request: web.Request, response: web.StreamResponse, chunks: Iterator[Any], executor: Executor
) -> None:
    """Send a generator's chunks as they come; each `next()` runs on the inference threads,
    since a generator may compute (or wait) between chunks."""
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    end = object()
    try:
        while True:
            chunk = await loop.run_in_executor(executor, next, chunks, end)
            if chunk is end:
                break
            await response.write(_chunk_bytes(chunk))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        # Headers are gone: the only honest signal left is a cut connection, not a clean end.
        log.exception("the streamed response of run() failed part way")
        if request.transport is not None:
            request.transport.abort()
        return
    await response.write_eof()


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _register(name: str, **attrs: Any) -> None:
    """Put a module under `name`, creating empty parent packages that do not exist yet."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent not in sys.modules:
            stub = _module(parent)
            stub.__path__ = []  # a package, so submodules can hang under it
            sys.modules[parent] = stub
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__path__", None) == []:
        existing.__dict__.update(attrs)  # one of our stub packages: give it the names too
    else:
        module = _module(name, **attrs)
        module.__path__ = []
        sys.modules[name] = module
    for depth in range(1, len(parts)):
        setattr(sys.modules[".".join(parts[:depth])], parts[depth], sys.modules[".".join(parts[: depth + 1])])


def install_azureml_aliases() -> None:
    """Let `from azureml.contrib.services.aml_request import rawhttp` and
    `from azureml.core.model import Model` work without the azureml packages.

    Only names that do not resolve already are registered: a real installation always wins.
    """
    request_attrs = {"AMLRequest": AMLRequest, "rawhttp": rawhttp, "_rawHttpRequested": False}
    response_attrs = {"AMLResponse": AMLResponse}
    for package in ("azureml.contrib.services", "azureml_inference_server_http.api"):
        if _resolves(f"{package}.aml_request"):
            continue
        _register(package)
        _register(f"{package}.aml_request", **request_attrs)
        _register(f"{package}.aml_response", **response_attrs)
    if not _resolves("azureml.core.model"):
        from . import _azureml_model as model

        errors = {
            "WebserviceException": model.WebserviceException,
            "ModelNotFoundException": model.ModelNotFoundException,
        }
        _register("azureml.core", Model=model.Model)
        _register("azureml.core.model", Model=model.Model)
        if not _resolves("azureml.exceptions"):
            _register("azureml.exceptions", **errors)


def _resolves(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
