"""The embedded registry: the OCI distribution API over per-repository OCI image layouts.

It serves exactly what the publisher, the edge agent and skopeo use, so that the same client code
runs against it and against Distribution/Harbor/ACR. It is not a general-purpose registry: no
garbage collection, no referrers API, no replication. See docs/hub.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules._errors import ModelfleetError
from modules.hub._layout import (
    DIGEST_RE,
    DigestMismatch,
    Layout,
    RangeMismatch,
    UnknownUpload,
    sha256_digest,
)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
REALM = "modelfleet-hub"
TOKEN_TTL_S = 300
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
# Content types a client sends when it does not know better; the manifest's own field decides.
_GENERIC_TYPES = {"", "application/octet-stream", "application/json", "text/plain"}

# The distribution spec's repository name grammar.
_NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# Path components that would land on a parent repository's own layout files.
_RESERVED_COMPONENTS = {"blobs", "index.json", "oci-layout"}

_UPLOAD_RE = re.compile(r"^(?P<name>.+)/blobs/uploads(?:/(?P<upload>[^/]*))?$")
_BLOB_RE = re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$")
_MANIFEST_RE = re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_TAGS_RE = re.compile(r"^(?P<name>.+)/tags/list$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/\S+)?$")


class RegistryStartError(ModelfleetError):
    """The embedded registry could not listen or use its data directory."""


class RegistryAPIError(Exception):
    """An error answered in the distribution spec's JSON shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}
        return web.json_response(body, status=self.status, headers={**API_VERSION_HEADER, **self.headers})


class _Reference(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    media_type: str | None = Field(default=None, alias="mediaType")
    digest: str
    urls: list[str] | None = None


class _Manifest(BaseModel):
    """Only the fields the registry must check; the stored bytes are never re-serialized."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int | None = Field(default=None, alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    config: _Reference | None = None
    layers: list[_Reference] | None = None
    manifests: list[_Reference] | None = None


def _validate_name(name: str) -> None:
    if len(name) > 255 or not _NAME_RE.match(name) or _RESERVED_COMPONENTS.intersection(name.split("/")):
        raise RegistryAPIError(400, "NAME_INVALID", "invalid repository name", {"name": name})


def _validate_digest(digest: str) -> None:
    if not DIGEST_RE.match(digest):
        raise RegistryAPIError(400, "DIGEST_INVALID", "only sha256 digests are supported", {"digest": digest})


def _parse_n(request: web.Request) -> int | None:
    raw = request.query.get("n")
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise RegistryAPIError(400, "PAGINATION_NUMBER_INVALID", "n must be a non-negative integer")
    return n


def _paginate(items: list[str], request: web.Request, path: str) -> tuple[list[str], dict[str, str]]:
    last = request.query.get("last")
    if last:
        items = [item for item in items if item > last]
    n = _parse_n(request)
    headers: dict[str, str] = {}
    if n is not None:
        if len(items) > n and n > 0:
            headers["Link"] = f'<{path}?n={n}&last={quote(items[n - 1], safe="")}>; rel="next"'
        items = items[:n]
    return items, headers


def _upload_range(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


class EmbeddedRegistry:
    """An OCI distribution registry served by aiohttp from a directory of OCI image layouts."""

    def __init__(
        self,
        root: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        token_auth: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if token_auth and username is None:
            raise ValueError("token_auth needs a username and password to issue tokens against")
        self.layout = Layout(Path(root))
        self._username = username
        self._password = password
        self._token_auth = token_auth
        self._tokens: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._wildcard = False

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the registry is not started")
        return self._url

    # -- lifecycle ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_middleware, self._auth_middleware])
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/v2", self._base)
        app.router.add_route("*", "/v2/", self._base)
        app.router.add_route("*", "/v2/{tail:.+}", self._dispatch)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            return self.url
        try:
            self.layout.prepare()
        except OSError as exc:
            raise RegistryStartError(
                f"cannot use data directory {self.layout.root}: {exc.strerror or exc}"
            ) from exc
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise RegistryStartError(
                f"registry cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self._wildcard = host in ("", "0.0.0.0", "::")
        url_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{url_host}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- middlewares --------------------------------------------------------------------------

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except RegistryAPIError as exc:
            return exc.response()

    def _basic_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or self._username is None or self._password is None:
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both comparisons always run, so timing does not tell which half was wrong.
        user_ok = hmac.compare_digest(user.encode(), self._username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return bool(sep) and user_ok and password_ok

    def _bearer_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        presented = value.strip().encode()
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(presented, token.encode())
        return found

    def _challenge(self, request: web.Request) -> RegistryAPIError:
        if self._token_auth:
            challenge = f'Bearer realm="{self._realm_base(request)}/token",service="{REALM}"'
            name = self._repository_of(request)
            if name is not None:
                challenge += f',scope="repository:{name}:pull,push"'
        else:
            challenge = f'Basic realm="{REALM}"'
        return RegistryAPIError(
            401,
            "UNAUTHORIZED",
            "authentication required",
            headers={"WWW-Authenticate": challenge},
        )

    def _realm_base(self, request: web.Request) -> str:
        # Bound to a wildcard address, our own URL is unreachable for remote clients; the Host
        # they used to reach us is not.
        if self._url is None or self._wildcard:
            return f"{request.scheme}://{request.host}"
        return self._url

    @staticmethod
    def _repository_of(request: web.Request) -> str | None:
        tail = request.match_info.get("tail")
        if not tail or tail == "_catalog":
            return None
        for pattern in (_UPLOAD_RE, _BLOB_RE, _MANIFEST_RE, _TAGS_RE):
            match = pattern.match(tail)
            if match:
                return match["name"]
        return None

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._username is None or request.path == "/token":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        allowed = self._bearer_ok(header) if self._token_auth else self._basic_ok(header)
        if not allowed:
            raise self._challenge(request)
        return await handler(request)

    # -- auth and base ------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        if not self._token_auth:
            raise RegistryAPIError(404, "UNSUPPORTED", "this registry does not issue tokens")
        if not self._basic_ok(request.headers.get("Authorization", "")):
            raise RegistryAPIError(
                401,
                "UNAUTHORIZED",
                "valid credentials required",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + TOKEN_TTL_S
        return web.json_response({"token": token, "access_token": token, "expires_in": TOKEN_TTL_S})

    async def _base(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            raise RegistryAPIError(405, "UNSUPPORTED", f"{request.method} not allowed here")
        return web.json_response({}, headers=API_VERSION_HEADER)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        method = request.method
        routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Any]]]] = [
            (
                _UPLOAD_RE,
                {
                    "POST": self._upload_start,
                    "PATCH": self._upload_patch,
                    "PUT": self._upload_finish,
                    "GET": self._upload_status,
                    "DELETE": self._upload_cancel,
                },
            ),
            (
                _BLOB_RE,
                {
                    "GET": self._blob_get,
                    "HEAD": self._blob_get,
                    "DELETE": self._blob_delete,
                },
            ),
            (
                _MANIFEST_RE,
                {
                    "GET": self._manifest_get,
                    "HEAD": self._manifest_get,
                    "PUT": self._manifest_put,
                    "DELETE": self._manifest_delete,
                },
            ),
            (_TAGS_RE, {"GET": self._tags_list}),
        ]
        if tail in ("_catalog", "_catalog/"):
            if method != "GET":
                raise RegistryAPIError(405, "UNSUPPORTED", f"{method} not allowed here")
            return await self._catalog(request)
        for pattern, handlers in routes:
            match = pattern.match(tail)
            if match is None:
                continue
            params = {key: value or "" for key, value in match.groupdict().items()}
            _validate_name(params["name"])
            handler = handlers.get(method)
            if handler is None:
                raise RegistryAPIError(405, "UNSUPPORTED", f"{method} not allowed here")
            return await handler(request, **params)
        raise RegistryAPIError(404, "NOT_FOUND", "no such endpoint", {"path": request.path})

    # -- blobs --------------------------------------------------------------------------------

    def _blob_headers(self, name: str, digest: str) -> dict[str, str]:
        return {
            **API_VERSION_HEADER,
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        }

    async def _blob_get(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        _validate_digest(digest)
        size = self.layout.blob_size(name, digest)
        if size is None:
            raise RegistryAPIError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        start, end = 0, size - 1
        status = 200
        headers = {
            **API_VERSION_HEADER,
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
        }
        range_header = request.headers.get("Range")
        if range_header:
            start, end = self._parse_range(range_header, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        response = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD":
            await response.prepare(request)
            await response.write_eof()
            return response
        await response.prepare(request)
        async for chunk in self.layout.read_blob(name, digest, start, length):
            await response.write(chunk)
        await response.write_eof()
        return response

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int]:
        unsatisfiable = RegistryAPIError(
            416,
            "RANGE_NOT_SATISFIABLE",
            "requested range not satisfiable",
            {"range": header, "size": size},
            headers={"Content-Range": f"bytes */{size}"},
        )
        match = _RANGE_RE.match(header.strip())
        if match is None or match.group(1) == match.group(2) == "":
            raise unsatisfiable
        first, last = match.groups()
        if first == "":
            # Suffix form: the last N bytes.
            count = int(last)
            if count == 0 or size == 0:
                raise unsatisfiable
            return max(size - count, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
        if start >= size or end < start:
            raise unsatisfiable
        return start, min(end, size - 1)

    async def _blob_delete(self, request: web.Request, name: str, digest: str) -> web.Response:
        _validate_digest(digest)
        if not self.layout.delete_blob(name, digest):
            raise RegistryAPIError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return web.Response(status=202, headers=API_VERSION_HEADER)

    # -- uploads ------------------------------------------------------------------------------

    def _upload_headers(self, name: str, upload_id: str, size: int) -> dict[str, str]:
        return {
            **API_VERSION_HEADER,
            "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "Range": _upload_range(size),
            "Docker-Upload-UUID": upload_id,
        }

    def _upload_of(self, name: str, upload: str) -> None:
        try:
            self.layout.upload(name, upload)
        except UnknownUpload:
            raise RegistryAPIError(
                404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", {"uuid": upload}
            ) from None

    async def _commit(self, name: str, upload_id: str, digest: str) -> web.Response:
        try:
            await self.layout.commit_upload(name, upload_id, digest)
        except DigestMismatch as exc:
            raise RegistryAPIError(400, "DIGEST_INVALID", str(exc), {"digest": digest}) from None
        except UnknownUpload:
            raise RegistryAPIError(
                404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", {"uuid": upload_id}
            ) from None
        return web.Response(status=201, headers=self._blob_headers(name, digest))

    async def _upload_start(self, request: web.Request, name: str, upload: str) -> web.Response:
        if upload:
            raise RegistryAPIError(405, "UNSUPPORTED", "POST goes to .../blobs/uploads/")
        mount = request.query.get("mount")
        source = request.query.get("from")
        if mount and source:
            _validate_digest(mount)
            _validate_name(source)
            if await self.layout.mount_blob(name, source, mount):
                return web.Response(status=201, headers=self._blob_headers(name, mount))
        digest = request.query.get("digest")
        if digest:
            _validate_digest(digest)
        upload_id = self.layout.new_upload(name)
        if digest:
            # Monolithic upload: the whole blob is this request's body.
            try:
                await self.layout.append_upload(name, upload_id, _body_chunks(request))
            except BaseException:
                # Nobody knows this session's id yet, so nobody could ever resume or cancel it.
                self.layout.cancel_upload(name, upload_id)
                raise
            return await self._commit(name, upload_id, digest)
        return web.Response(status=202, headers=self._upload_headers(name, upload_id, 0))

    def _content_range_start(self, request: web.Request) -> int | None:
        header = request.headers.get("Content-Range")
        if not header:
            return None
        match = _CONTENT_RANGE_RE.match(header.strip())
        if match is None:
            raise RegistryAPIError(416, "BLOB_UPLOAD_INVALID", "malformed Content-Range", {"range": header})
        return int(match.group(1))

    async def _append(self, request: web.Request, name: str, upload: str) -> int:
        start = self._content_range_start(request)
        try:
            return await self.layout.append_upload(name, upload, _body_chunks(request), start)
        except RangeMismatch as exc:
            raise RegistryAPIError(
                416,
                "BLOB_UPLOAD_INVALID",
                f"chunk must start at offset {exc.offset}",
                headers=self._upload_headers(name, upload, exc.offset),
            ) from None
        except UnknownUpload:
            raise RegistryAPIError(
                404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", {"uuid": upload}
            ) from None

    async def _upload_patch(self, request: web.Request, name: str, upload: str) -> web.Response:
        size = await self._append(request, name, upload)
        return web.Response(status=202, headers=self._upload_headers(name, upload, size))

    async def _upload_finish(self, request: web.Request, name: str, upload: str) -> web.Response:
        digest = request.query.get("digest")
        if not digest:
            raise RegistryAPIError(400, "DIGEST_INVALID", "the digest query parameter is required")
        _validate_digest(digest)
        self._upload_of(name, upload)
        await self._append(request, name, upload)
        return await self._commit(name, upload, digest)

    async def _upload_status(self, request: web.Request, name: str, upload: str) -> web.Response:
        self._upload_of(name, upload)
        size = self.layout.upload(name, upload).size
        return web.Response(status=204, headers=self._upload_headers(name, upload, size))

    async def _upload_cancel(self, request: web.Request, name: str, upload: str) -> web.Response:
        self._upload_of(name, upload)
        self.layout.cancel_upload(name, upload)
        return web.Response(status=204, headers=API_VERSION_HEADER)

    # -- manifests ----------------------------------------------------------------------------

    def _manifest_unknown(self, reference: str) -> RegistryAPIError:
        return RegistryAPIError(
            404, "MANIFEST_UNKNOWN", "manifest unknown to registry", {"reference": reference}
        )

    @staticmethod
    def _validate_reference(reference: str) -> None:
        if DIGEST_RE.match(reference) or _TAG_RE.match(reference):
            return
        if ":" in reference:
            _validate_digest(reference)
        raise RegistryAPIError(400, "TAG_INVALID", "invalid tag", {"tag": reference})

    async def _manifest_get(self, request: web.Request, name: str, reference: str) -> web.Response:
        self._validate_reference(reference)
        entry = self.layout.resolve(name, reference)
        if entry is None:
            raise self._manifest_unknown(reference)
        try:
            data = self.layout.read_manifest(name, entry)
        except FileNotFoundError:
            raise self._manifest_unknown(reference) from None
        headers = {
            **API_VERSION_HEADER,
            "Docker-Content-Digest": entry.digest,
            "ETag": f'"{entry.digest}"',
        }
        # aiohttp leaves the body out of a HEAD answer but keeps its Content-Length.
        return web.Response(body=data, headers={**headers, "Content-Type": entry.media_type})

    async def _read_manifest_body(self, request: web.Request) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > MAX_MANIFEST_BYTES:
                raise RegistryAPIError(
                    413, "SIZE_INVALID", f"manifests are limited to {MAX_MANIFEST_BYTES} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    async def _manifest_put(self, request: web.Request, name: str, reference: str) -> web.Response:
        self._validate_reference(reference)
        data = await self._read_manifest_body(request)
        try:
            parsed = _Manifest.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            raise RegistryAPIError(
                400, "MANIFEST_INVALID", "manifest is not valid JSON of a known shape", str(exc)
            ) from None
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = (content_type if content_type not in _GENERIC_TYPES else parsed.media_type) or (
            OCI_INDEX if parsed.manifests is not None else OCI_MANIFEST
        )
        self._check_references(name, media_type, parsed)
        digest = sha256_digest(data)
        tag: str | None = reference
        if DIGEST_RE.match(reference):
            if reference != digest:
                raise RegistryAPIError(
                    400,
                    "DIGEST_INVALID",
                    f"manifest hashes to {digest}, not {reference}",
                    {"digest": reference},
                )
            tag = None
        await self.layout.put_manifest(name, tag, data, media_type)
        return web.Response(
            status=201,
            headers={
                **API_VERSION_HEADER,
                "Location": f"/v2/{name}/manifests/{digest}",
                "Docker-Content-Digest": digest,
            },
        )

    def _check_references(self, name: str, media_type: str, manifest: _Manifest) -> None:
        if media_type in _INDEX_TYPES or (manifest.manifests is not None and manifest.config is None):
            missing = [
                ref.digest
                for ref in manifest.manifests or []
                if not DIGEST_RE.match(ref.digest) or not self.layout.has_manifest(name, ref.digest)
            ]
            if missing:
                raise RegistryAPIError(
                    400,
                    "MANIFEST_BLOB_UNKNOWN",
                    "the index references manifests unknown to this repository",
                    {"digests": missing},
                )
            return
        if manifest.config is None:
            raise RegistryAPIError(400, "MANIFEST_INVALID", "an image manifest needs a config descriptor")
        missing = []
        for ref in [manifest.config, *(manifest.layers or [])]:
            kind = ref.media_type or ""
            if ref.urls and ("foreign" in kind or "nondistributable" in kind):
                continue  # Foreign layers live elsewhere by design.
            if not DIGEST_RE.match(ref.digest) or self.layout.blob_size(name, ref.digest) is None:
                missing.append(ref.digest)
        if missing:
            raise RegistryAPIError(
                400,
                "MANIFEST_BLOB_UNKNOWN",
                "the manifest references blobs unknown to this repository",
                {"digests": missing},
            )

    async def _manifest_delete(self, request: web.Request, name: str, reference: str) -> web.Response:
        self._validate_reference(reference)
        if not await self.layout.delete_manifest(name, reference):
            raise self._manifest_unknown(reference)
        return web.Response(status=202, headers=API_VERSION_HEADER)

    # -- listings -----------------------------------------------------------------------------

    async def _tags_list(self, request: web.Request, name: str) -> web.Response:
        tags = self.layout.tags(name)
        if tags is None:
            raise RegistryAPIError(
                404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        page, headers = _paginate(tags, request, f"/v2/{name}/tags/list")
        return web.json_response({"name": name, "tags": page}, headers={**API_VERSION_HEADER, **headers})

    async def _catalog(self, request: web.Request) -> web.Response:
        page, headers = _paginate(self.layout.repositories(), request, "/v2/_catalog")
        return web.json_response({"repositories": page}, headers={**API_VERSION_HEADER, **headers})
