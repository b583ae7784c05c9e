"""An asyncio client for the OCI distribution API, shared by the publisher and the agent.

Everything fetched is checked against its digest before anyone uses it, downloads resume with
HTTP Range after a cut, and files only appear at their final path once complete and verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from yarl import URL

from modules._errors import (
    AuthenticationError,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    RegistryUnreachableError,
)
from modules.atomic_file import fsync_dir
from modules.oci._auth import Challenge, RegistryCredentials, parse_challenge
from modules.oci._digest import CHUNK, check_digest, sha256_bytes, sha256_file
from modules.oci._url import normalize_registry_url
from modules.oci.media_types import MANIFEST_ACCEPT

log = logging.getLogger(__name__)

PushOutcome = Literal["existing", "mounted", "uploaded", "needs-data"]
_TRANSIENT_STATUS = {502, 503, 504}
# Bytes gathered on the loop before one write-and-hash in a worker thread.
WRITE_BATCH = 1 << 20
_NETWORK_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    asyncio.TimeoutError,
    ConnectionError,
)


@dataclass
class TransferStats:
    """What actually crossed the wire; tests and the CLI read it to prove re-use."""

    requests: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_existing: int = 0
    resumed_downloads: int = 0


@dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest as the registry sent it: the exact bytes, since they are what the
    digest names (not to be confused with a deployment manifest, `modules.deployment.Manifest`)."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class _Body:
    """A request body that can be produced again when an auth challenge forces a retry."""

    make: Callable[[], Any]
    length: int
    close: list[Callable[[], None]] = field(default_factory=list)


class RegistryClient:
    """One registry, one `aiohttp` session; use as `async with RegistryClient(url) as client`."""

    def __init__(
        self,
        url: str,
        credentials: RegistryCredentials | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        retry_delay: float = 0.2,
    ) -> None:
        self.url = normalize_registry_url(url)
        self._base = URL(self.url)
        self.credentials = credentials or RegistryCredentials()
        self.stats = TransferStats()
        self._timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=timeout)
        self._retries = retries
        self._retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None
        self._basic = False
        self._tokens: dict[str, str] = {}

    async def __aenter__(self) -> RegistryClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport ------------------------------------------------------------------------

    def _auth_header(self, scope_key: str) -> str | None:
        if self.credentials.token is not None:
            return "Bearer " + self.credentials.token.get_secret_value()
        if scope_key in self._tokens:
            return "Bearer " + self._tokens[scope_key]
        if self._basic and self.credentials.has_basic:
            return self.credentials.basic_header()
        return None

    async def _answer_challenge(self, challenge: Challenge | None, scope_key: str) -> None:
        """Learn how to authenticate from a 401; raise if we cannot."""
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise AuthenticationError(f"registry {self.url} requires authentication")
        if challenge.scheme == "basic":
            if not self.credentials.has_basic:
                raise AuthenticationError(
                    f"registry {self.url} requires credentials; set MODELFLEET_REGISTRY_USERNAME "
                    "and MODELFLEET_REGISTRY_PASSWORD (or --registry-user/--registry-password)"
                )
            self._basic = True
            return
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationError(f"registry {self.url} sent a Bearer challenge without realm")
        params = {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
        headers = {}
        if self.credentials.has_basic:
            headers["Authorization"] = self.credentials.basic_header()
        assert self._session is not None
        try:
            async with self._session.get(realm, params=params, headers=headers) as resp:
                self.stats.requests += 1
                if resp.status in (401, 403):
                    raise AuthenticationError(_refused(self))
                if resp.status != 200:
                    raise RegistryError(f"registry token service answered HTTP {resp.status}")
                payload = await resp.json(content_type=None)
        except _NETWORK_ERRORS as exc:
            raise RegistryUnreachableError(f"cannot reach registry token service {realm}: {exc}") from exc
        token = payload.get("token") or payload.get("access_token")
        if not token:
            raise AuthenticationError("registry token service returned no token")
        self._tokens[scope_key] = token

    def _resolve(self, target: str | URL) -> URL:
        url = URL(target) if isinstance(target, str) else target
        return url if url.is_absolute() else self._base.join(url)

    async def _send(
        self,
        method: str,
        target: str | URL,
        *,
        scope_key: str = "",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: _Body | bytes | None = None,
        ok: Sequence[int] = (200,),
        idempotent: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request, answering auth challenges and retrying transient failures.

        The caller owns the returned response and must release it.
        """
        assert self._session is not None, "use RegistryClient as an async context manager"
        url = self._resolve(target)
        if params:
            url = url.update_query(params)
        attempts = self._retries + 1 if idempotent else 1
        auth_tries = 0
        attempt = 0
        while True:
            attempt += 1
            hdrs = dict(headers or {})
            auth = self._auth_header(scope_key)
            if auth:
                hdrs["Authorization"] = auth
            data: Any = None
            if isinstance(body, bytes):
                data = body
            elif body is not None:
                data = body.make()
                hdrs["Content-Length"] = str(body.length)
            try:
                resp = await self._session.request(method, url, headers=hdrs, data=data)
            except _NETWORK_ERRORS as exc:
                if attempt < attempts:
                    await asyncio.sleep(self._retry_delay * 2 ** (attempt - 1))
                    continue
                raise RegistryUnreachableError(
                    f"cannot reach registry at {self.url}: {_describe(exc)}"
                ) from exc
            finally:
                if body is not None and not isinstance(body, bytes):
                    for close in body.close:
                        close()
                    body.close.clear()
            self.stats.requests += 1
            if resp.status == 401:
                header = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                sent_fixed = self.credentials.token is not None or (
                    auth is not None and auth.startswith("Basic ")
                )
                if sent_fixed or auth_tries >= 1:
                    raise AuthenticationError(_refused(self))
                self._tokens.pop(scope_key, None)
                auth_tries += 1
                await self._answer_challenge(parse_challenge(header), scope_key)
                continue
            if resp.status in _TRANSIENT_STATUS and attempt < attempts:
                resp.release()
                await asyncio.sleep(self._retry_delay * 2 ** (attempt - 1))
                continue
            if resp.status in ok:
                return resp
            await _raise_for(resp, self)

    # -- repositories ---------------------------------------------------------------------

    async def ping(self) -> None:
        """Check reachability and credentials with `GET /v2/`."""
        resp = await self._send("GET", "/v2/", scope_key="")
        resp.release()

    async def list_tags(self, repository: str, *, missing_ok: bool = True) -> list[str]:
        tags: list[str] = []
        target: str | URL = f"/v2/{repository}/tags/list"
        params: dict[str, str] | None = {"n": "1000"}
        while target:
            try:
                resp = await self._send("GET", target, scope_key=repository, params=params)
            except NotFoundError:
                if missing_ok:
                    return []
                raise
            async with resp:
                payload = await resp.json(content_type=None)
                tags.extend(payload.get("tags") or [])
                target = _next_link(resp)
                params = None
        return tags

    async def catalog(self) -> list[str]:
        repos: list[str] = []
        target: str | URL = "/v2/_catalog"
        params: dict[str, str] | None = {"n": "1000"}
        while target:
            resp = await self._send("GET", target, scope_key="registry:catalog:*", params=params)
            async with resp:
                payload = await resp.json(content_type=None)
                repos.extend(payload.get("repositories") or [])
                target = _next_link(resp)
                params = None
        return repos

    # -- manifests ------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> ImageManifest:
        resp = await self._send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope_key=repository,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        async with resp:
            body = await resp.read()
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
        digest = sha256_bytes(body)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} content does not match its digest (got {digest})"
            )
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatchError(
                f"manifest {repository}:{reference} does not match the digest the registry "
                f"announced ({header_digest}, content hashes to {digest})"
            )
        if not media_type or media_type == "application/json":
            media_type = json.loads(body).get("mediaType", media_type)
        return ImageManifest(body=body, media_type=media_type, digest=digest)

    async def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag points at, or None when it does not exist."""
        try:
            resp = await self._send(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                scope_key=repository,
                headers={"Accept": MANIFEST_ACCEPT},
            )
        except NotFoundError:
            return None
        resp.release()
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        return (await self.get_manifest(repository, reference)).digest

    async def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        resp = await self._send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope_key=repository,
            headers={"Content-Type": media_type},
            body=body,
            ok=(201, 200, 202),
        )
        resp.release()
        digest = sha256_bytes(body)
        announced = resp.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatchError(
                f"registry stored manifest {repository}:{reference} as {announced}, expected {digest}"
            )
        self.stats.bytes_uploaded += len(body)
        return digest

    async def delete_manifest(self, repository: str, digest: str) -> None:
        check_digest(digest)
        resp = await self._send(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scope_key=repository,
            ok=(202, 200, 204),
        )
        resp.release()

    # -- blobs ----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            resp = await self._send(
                "HEAD", f"/v2/{repository}/blobs/{check_digest(digest)}", scope_key=repository
            )
        except NotFoundError:
            return False
        resp.release()
        return True

    async def push_blob(
        self,
        repository: str,
        source: bytes | Path | None,
        digest: str | None = None,
        *,
        mount_from: Sequence[str] = (),
    ) -> PushOutcome:
        """Make a blob present in `repository`, moving as few bytes as the registry allows.

        Order: already there -> cross-repository mount -> monolithic upload. With `source=None`
        nothing is uploaded and "needs-data" says the caller must supply the bytes.
        """
        if digest is None:
            if source is None:
                raise ValueError("push_blob needs a digest when it has no source")
            digest, _ = (
                (sha256_bytes(source), len(source))
                if isinstance(source, bytes)
                else await asyncio.to_thread(sha256_file, source)
            )
        check_digest(digest)
        if await self.blob_exists(repository, digest):
            self.stats.blobs_existing += 1
            return "existing"
        for origin in mount_from:
            if origin != repository and await self._mount(repository, digest, origin):
                self.stats.blobs_mounted += 1
                return "mounted"
        if source is None:
            return "needs-data"
        resp = await self._send(
            "POST", f"/v2/{repository}/blobs/uploads/", scope_key=repository, ok=(202,), idempotent=False
        )
        resp.release()
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.url} opened an upload without a Location")
        body = _body_of(source)
        resp = await self._send(
            "PUT",
            location,
            scope_key=repository,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            body=body,
            ok=(201, 204),
            idempotent=False,
        )
        resp.release()
        self.stats.blobs_uploaded += 1
        self.stats.bytes_uploaded += body.length
        return "uploaded"

    async def _mount(self, repository: str, digest: str, origin: str) -> bool:
        resp = await self._send(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope_key=repository,
            params={"mount": digest, "from": origin},
            ok=(201, 202),
            idempotent=False,
        )
        resp.release()
        if resp.status == 201:
            return True
        location = resp.headers.get("Location")
        if location:  # the registry opened an upload session instead: give it back
            with contextlib.suppress(RegistryError):
                (
                    await self._send("DELETE", location, scope_key=repository, ok=(204, 200, 202, 404))
                ).release()
        return False

    async def get_blob(self, repository: str, digest: str, *, max_bytes: int = 16 << 20) -> bytes:
        """A small blob (a config, a sample) read into memory and verified."""
        resp = await self._send("GET", f"/v2/{repository}/blobs/{check_digest(digest)}", scope_key=repository)
        async with resp:
            length = resp.content_length
            if length is not None and length > max_bytes:
                raise RegistryError(f"blob {digest} is {length} bytes, over the {max_bytes} limit")
            try:
                data = await resp.read()
            except _NETWORK_ERRORS as exc:
                raise RegistryUnreachableError(f"download of {digest} was cut: {exc}") from exc
        self.stats.bytes_downloaded += len(data)
        actual = sha256_bytes(data)
        if actual != digest:
            raise DigestMismatchError(
                f"blob {repository}@{digest} content does not match its digest (got {actual})"
            )
        return data

    async def download_blob(
        self,
        repository: str,
        digest: str,
        dest: Path,
        *,
        size: int | None = None,
        progress: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> Path:
        """Fetch a blob to `dest`: resumable, verified, and atomically placed.

        Bytes land in `dest.partial` first; a cut connection (in this call, or a previous
        process) resumes from the bytes already there with `Range`. Only a blob whose sha256
        matches is renamed into place; a mismatch deletes the partial file and raises.
        """
        check_digest(digest)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        hasher = hashlib.sha256()
        offset = 0
        if partial.exists():
            offset = await asyncio.to_thread(_hash_into, partial, hasher)
            if size is not None and offset > size:
                partial.unlink()
                hasher, offset = hashlib.sha256(), 0
        failures = 0
        while True:
            if size is not None and offset == size:
                break
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            if offset:
                self.stats.resumed_downloads += 1
            # Opened before the request: once the response arrives, reading it must not wait for
            # the disk (a connection cut while we wait loses the bytes aiohttp had buffered).
            sink = _BlobSink(await asyncio.to_thread(partial.open, "ab" if offset else "wb"), hasher)
            try:
                resp = await self._send(
                    "GET",
                    f"/v2/{repository}/blobs/{digest}",
                    scope_key=repository,
                    headers=headers,
                    ok=(200, 206, 416),
                )
            except BaseException:
                await sink.close(sync=False)
                raise
            try:
                if resp.status == 416:
                    # The partial file is at least as long as the blob: check it as it is.
                    await sink.close(sync=False)
                    break
                if resp.status == 200 and offset:
                    hasher, offset = hashlib.sha256(), 0
                    await sink.restart(hasher)
                # The event loop never waits on the disk: bytes are gathered here and written,
                # hashed and fsynced in a worker thread a batch at a time, so the front proxies and
                # the agent that share the loop keep answering during a large download.
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        offset += len(chunk)
                        self.stats.bytes_downloaded += len(chunk)
                        await sink.add(chunk)
                        if size is not None and offset > size:
                            break
                        if progress is not None:
                            maybe = progress(offset)
                            if maybe is not None:
                                await maybe
                    await sink.close(sync=True)
                except _NETWORK_ERRORS as exc:
                    await sink.close(sync=False)  # what arrived stays, for the resumed request
                    failures += 1
                    if failures > self._retries:
                        raise RegistryUnreachableError(
                            f"download of {repository}@{digest} kept failing at byte {offset}: "
                            f"{_describe(exc)}; run again to resume"
                        ) from exc
                    log.info("download of %s cut at byte %d, resuming", digest, offset)
                    await asyncio.sleep(self._retry_delay * 2 ** (failures - 1))
                    continue
            finally:
                resp.release()
                if not sink.file.closed:
                    await sink.close(sync=False)
            if size is None or offset >= size:
                break
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest or (size is not None and offset != size):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise DigestMismatchError(
                f"blob {repository}@{digest} content does not match its digest "
                f"(got {actual}, {offset} bytes); the download was discarded"
            )
        await asyncio.to_thread(_place, partial, dest)
        return dest


def _place(partial: Path, dest: Path) -> None:
    os.replace(partial, dest)
    fsync_dir(dest.parent)


class _BlobSink:
    """A download's partial file, written and hashed off the event loop in batches."""

    def __init__(self, file: Any, hasher: Any) -> None:
        self.file = file
        self.hasher = hasher
        self.pending = bytearray()

    async def restart(self, hasher: Any) -> None:
        """The server sent the whole blob instead of the range asked for: start the file over."""
        self.hasher, self.pending = hasher, bytearray()
        await asyncio.to_thread(_truncate, self.file)

    async def add(self, chunk: bytes) -> None:
        self.pending += chunk
        if len(self.pending) >= WRITE_BATCH:
            await self._write()

    async def _write(self) -> None:
        data, self.pending = bytes(self.pending), bytearray()
        await asyncio.to_thread(_write_and_hash, self.file, self.hasher, data)

    async def close(self, *, sync: bool) -> None:
        """Write what is pending (also after a cut: those bytes are counted already), then
        flush, fsync if asked, and close."""
        try:
            if self.pending:
                await self._write()
            await asyncio.to_thread(_finish, self.file, sync)
        finally:
            if not self.file.closed:
                await asyncio.to_thread(self.file.close)


def _truncate(file: Any) -> None:
    file.seek(0)
    file.truncate()


def _write_and_hash(file: Any, hasher: Any, data: bytes) -> None:
    file.write(data)
    hasher.update(data)  # hashlib releases the GIL for large updates


def _finish(file: Any, sync: bool) -> None:
    file.flush()
    if sync:
        os.fsync(file.fileno())
    file.close()


def _hash_into(path: Path, hasher: Any) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            n += len(chunk)
    return n


def _body_of(source: bytes | Path) -> _Body:
    if isinstance(source, bytes):
        return _Body(make=lambda: source, length=len(source))
    size = source.stat().st_size
    body = _Body(make=lambda: None, length=size)

    def make() -> Any:
        f = source.open("rb")
        body.close.append(f.close)
        return f

    body.make = make
    return body


def _next_link(resp: aiohttp.ClientResponse) -> str:
    link = resp.headers.get("Link", "")
    if 'rel="next"' not in link:
        return ""
    return link.split(";")[0].strip().strip("<>")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _refused(client: RegistryClient) -> str:
    if client.credentials.username:
        return f"registry {client.url} refused the credentials for user {client.credentials.username!r}"
    if client.credentials.token is not None:
        return f"registry {client.url} refused the access token"
    return f"registry {client.url} refused anonymous access; give credentials"


async def _raise_for(resp: aiohttp.ClientResponse, client: RegistryClient) -> None:
    """Turn an error response into the matching exception with the registry's own words."""
    try:
        text = (await resp.read()).decode("utf-8", "replace")
    finally:
        resp.release()
    detail = ""
    code = ""
    try:
        errors = json.loads(text).get("errors") or []
        if errors:
            code = errors[0].get("code", "")
            detail = errors[0].get("message", "") or code
    except (ValueError, AttributeError):
        detail = text.strip().splitlines()[0][:200] if text.strip() else ""
    what = f"{resp.method} {resp.url.path}"
    message = f"registry answered HTTP {resp.status} to {what}" + (f": {detail}" if detail else "")
    if resp.status == 404:
        raise NotFoundError(message)
    if resp.status in (401, 403):
        raise AuthenticationError(_refused(client) if resp.status == 401 else message)
    if resp.status == 405 and resp.method == "DELETE":
        raise RegistryError(message + " (deletion is disabled on this registry)")
    if code == "DIGEST_INVALID":
        raise DigestMismatchError(message)
    raise RegistryError(message)
