"""Versions of a named artifact: integer tags in one repository, auto-incremented from 1."""

from __future__ import annotations

import asyncio
import re

from modules import ConfigError, NotFoundError, VersionConflictError
from modules.oci import ImageManifest, RegistryClient
from modules.spec import NAME_PATTERN

_NAME_RE = re.compile(NAME_PATTERN)


def check_name(name: str, kind: str) -> str:
    if not _NAME_RE.match(name) or len(name) > 128:
        raise ConfigError(
            f"invalid {kind} name {name!r}: use lower-case letters, digits and single '.', '_' or '-' "
            "between them (at most 128 characters)"
        )
    return name


def parse_ref(ref: str, kind: str) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` as typed on the command line."""
    name, sep, version = ref.partition(":")
    check_name(name, kind)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ConfigError(f"invalid {kind} version in {ref!r}: versions are integers from 1")
    return name, int(version)


async def versions(client: RegistryClient, repository: str) -> list[int]:
    tags = await client.list_tags(repository)
    return sorted(int(t) for t in tags if t.isdigit())


async def next_version(client: RegistryClient, repository: str, explicit: int | None) -> int:
    existing = await versions(client, repository)
    if explicit is None:
        return (existing[-1] + 1) if existing else 1
    if explicit < 1:
        raise ConfigError("versions are integers from 1")
    if explicit in existing:
        raise VersionConflictError(f"{repository.split('/', 1)[1]}:{explicit} already exists")
    return explicit


async def resolve_version(client: RegistryClient, repository: str, version: int | None, label: str) -> int:
    if version is not None:
        return version
    existing = await versions(client, repository)
    if not existing:
        raise NotFoundError(f"{label} {repository.split('/', 1)[1]!r} is not registered")
    return existing[-1]


async def get_manifest(client: RegistryClient, repository: str, version: int, label: str) -> ImageManifest:
    try:
        return await client.get_manifest(repository, str(version))
    except NotFoundError:
        raise NotFoundError(f"{label} {repository.split('/', 1)[1]}:{version} does not exist") from None


async def gather_limited(coros: list, limit: int = 8) -> list:  # type: ignore[type-arg]
    """Run many small registry requests concurrently without opening hundreds of connections."""
    gate = asyncio.Semaphore(limit)

    async def one(coro):  # type: ignore[no-untyped-def]
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def read_config(
    client: RegistryClient, repository: str, version: int, label: str, media_type: str
) -> tuple[bytes, str]:
    """The config blob of one version and its manifest digest; refuses other kinds of artifact."""
    manifest = await get_manifest(client, repository, version, label)
    body = manifest.json()
    if body.get("config", {}).get("mediaType") != media_type:
        raise NotFoundError(f"{repository}:{version} is not a modelfleet {label} artifact")
    return await client.get_blob(repository, body["config"]["digest"]), manifest.digest


async def named_versions(
    client: RegistryClient, prefix: str, name: str | None, label: str, latest: bool
) -> list[tuple[str, int]]:
    """(name, version) pairs under a repository prefix, every version or only the latest."""
    if name is not None:
        names = [check_name(name, label)]
    else:
        names = sorted(r[len(prefix) :] for r in await client.catalog() if r.startswith(prefix))
    wanted: list[tuple[str, int]] = []
    for each in names:
        numbers = await versions(client, prefix + each)
        wanted += [(each, n) for n in (numbers[-1:] if latest else numbers)]
    return wanted
