"""What the agent has applied, on disk, so a restart (even after `kill -9`) resumes instead of
starting over: accepted documents, last applied versions (the replay guard), the module instances
it started (to re-adopt them rather than run a second copy) and what failed (not to retry it).

The file is written whole (write-then-rename, fsync'd), and only by one writer per agent: a
snapshot is taken on the event loop, where the state changes, so it is always a state the agent
was really in; the disk work runs in a thread, so the loop (and every other agent sharing it in
the simulator) never waits on fsync. Snapshots reach the disk in the order they were taken, and
changes made while a write is under way are coalesced into the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from edge_agent._planner import DesiredModule
from modules.atomic_file import write_atomic

log = logging.getLogger(__name__)

# The fields of a desired module that state files of schema 1 kept flat on the instance record.
_FLAT_DESIRED = {
    "module": "name",
    "deployment": "deployment",
    "repository": "repository",
    "digest": "digest",
    "public_port": "port",
    "restart_policy": "restart_policy",
    "startup_order": "startup_order",
    "env": "env",
    "execution_providers": "execution_providers",
    "health_probe": "health_probe",
    "keys_version": "keys_version",
}


class InstanceRecord(BaseModel):
    """One running instance: the desired module it runs, and where it runs."""

    desired: DesiredModule
    instance_id: str
    pid: int | None = None
    internal_port: int
    version: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "desired" not in data and "module" in data:
            desired = {new: data[old] for old, new in _FLAT_DESIRED.items() if data.get(old) is not None}
            rest = {k: v for k, v in data.items() if k not in _FLAT_DESIRED and k != "fingerprint"}
            return {**rest, "desired": desired}
        return data

    @property
    def module(self) -> str:
        return self.desired.name

    @property
    def deployment(self) -> str | None:
        return self.desired.deployment

    @property
    def digest(self) -> str:
        return self.desired.digest

    @property
    def fingerprint(self) -> str:
        return self.desired.fingerprint

    @property
    def startup_order(self) -> int:
        return self.desired.startup_order

    @property
    def public_port(self) -> int:
        return self.desired.port


class Failure(BaseModel):
    """A desired configuration that could not be applied. A permanent failure is not retried
    until the desired state changes; a transient one is retried at `retry_at`, with backoff."""

    fingerprint: str
    reason: str
    transient: bool = False
    attempts: int = 1
    retry_at: datetime | None = None


class PersistedState(BaseModel):
    schema_version: int = 2
    # deployment name -> raw signed document (as received), the candidates for selection
    documents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # deployment name -> the raw document last applied (kept while a newer version is deferred)
    applied_documents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # document identity (name, or name@device for an override) -> highest version accepted,
    # documents and signed deletions alike: anything not above it is a replay
    last_versions: dict[str, int] = Field(default_factory=dict)
    # deployment -> highest version of its scoring keys accepted (documents and deletions)
    keys_versions: dict[str, int] = Field(default_factory=dict)
    # direct-method request id -> its expiry (ISO 8601): a request id is answered once
    seen_requests: dict[str, str] = Field(default_factory=dict)
    modules: dict[str, InstanceRecord] = Field(default_factory=dict)
    # module name -> the configuration that failed, and why
    failures: dict[str, Failure] = Field(default_factory=dict)
    # deployment name -> the sealed (still encrypted) keys document as received
    sealed_keys: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_schema_1(cls, data: Any) -> Any:
        """Schema 1 kept failures in two parallel maps (fingerprints, reasons)."""
        if isinstance(data, dict) and ("failed" in data or "failed_reasons" in data):
            data = dict(data)
            fingerprints = data.pop("failed", None) or {}
            reasons = data.pop("failed_reasons", None) or {}
            data.setdefault("failures", {})
            for name, fingerprint in fingerprints.items():
                data["failures"][name] = {"fingerprint": fingerprint, "reason": reasons.get(name, "failed")}
            data["schema_version"] = 2
        return data


class StateFile:
    """The state file on disk: read once at start, replaced whole on every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0  # files actually written (benchmarks and tests count them)
        self._lock = threading.Lock()
        self._taken = 0  # the generation of the newest snapshot taken
        self._on_disk = 0  # the generation of the snapshot the file holds
        self._last = b""  # what this process last wrote there
        # slot -> (the raw document, its JSON), for documents and applied documents
        self._json: dict[str, dict[str, tuple[dict[str, Any], str]]] = {"documents": {}, "applied": {}}

    def load(self) -> PersistedState:
        try:
            return PersistedState.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return PersistedState()
        except (ValidationError, ValueError, OSError) as exc:
            # Never die on our own state: keep the bad file for inspection and start clean.
            bad = self.path.with_suffix(".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            log.error("agent state %s was unreadable (%s); moved to %s, starting clean", self.path, exc, bad)
            return PersistedState()

    def snapshot(self, state: PersistedState) -> tuple[int, bytes]:
        """The state as it is now, and its generation. Call it where the state changes (the event
        loop): a snapshot taken elsewhere could mix a state before and after one change.

        Accepted documents are most of the file and never change once accepted (a new version is
        a new dict), so each one's JSON is reused while the very same dict is stored."""
        self._taken += 1
        documents = self._documents_json("documents", state.documents)
        applied = self._documents_json("applied", state.applied_documents)
        rest = state.model_dump(mode="json", exclude={"documents", "applied_documents"})
        body = json.dumps(rest, separators=(",", ":"), sort_keys=True)
        data = f'{{"applied_documents":{applied},"documents":{documents},{body[1:]}'
        return self._taken, data.encode()

    def _documents_json(self, which: str, documents: dict[str, dict[str, Any]]) -> str:
        previous = self._json[which]
        kept: dict[str, tuple[dict[str, Any], str]] = {}
        parts = []
        for slot in sorted(documents):
            raw = documents[slot]
            cached = previous.get(slot)
            if cached is None or cached[0] is not raw:
                # the raw signed form as received: json writes back exactly what it parsed
                cached = (raw, json.dumps(raw, separators=(",", ":"), sort_keys=True))
            kept[slot] = cached
            parts.append(f"{json.dumps(slot)}:{cached[1]}")
        self._json[which] = kept
        return "{" + ",".join(parts) + "}"

    def write(self, generation: int, data: bytes) -> bool:
        """Put a snapshot on disk unless a later one is there already, or the same bytes; True
        when the file was replaced. Safe from any thread.

        Write-then-rename with fsync: a crash leaves the old or the new file, never half of one,
        and never a state older than one already written."""
        with self._lock:
            if generation <= self._on_disk:
                return False
            if data == self._last:  # nothing changed since the file was written: no write, no fsync
                self._on_disk = generation
                return False
            try:
                write_atomic(self.path, data, mode=0o600)
            except FileNotFoundError:  # the data folder is not there (yet, or any more)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, data, mode=0o600)
            self._on_disk = generation
            self._last = data
            self.writes += 1
            return True

    def save(self, state: PersistedState) -> None:
        """Write `state` now, on the calling thread."""
        self.write(*self.snapshot(state))


class StateWriter:
    """The single writer of one agent's state file.

    `changed()` asks for a write that starts at once, off the event loop; changes made while it
    runs go into the next one. `flush()` returns once every change made before it was called is
    on disk (or raises why it cannot be). `write_now()` writes on the calling thread, for the
    rare change that must be durable before the very next statement runs.
    """

    def __init__(self, file: StateFile, state: Callable[[], PersistedState]) -> None:
        self.file = file
        self._state = state
        self._changes = 0  # changes asked for so far
        self._written = 0  # changes covered by the newest snapshot on disk
        self._task: asyncio.Task[None] | None = None
        self.error: Exception | None = None  # why the last write failed (None after a good one)

    def mark(self) -> None:
        """The state changed; the next write (or flush) takes it along."""
        self._changes += 1

    def changed(self) -> None:
        """The state changed: write it soon, off the loop (at once, without a running loop)."""
        self._changes += 1
        try:
            self._kick()
        except RuntimeError:  # no running loop
            self.write_now()

    def _kick(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="state-writer")
        return self._task

    async def _drain(self) -> None:
        while self._written < self._changes:
            covers = self._changes
            generation, data = self.file.snapshot(self._state())
            try:
                await asyncio.to_thread(self.file.write, generation, data)
            except Exception as exc:
                self.error = exc
                log.error("could not write the agent state %s: %s", self.file.path, exc)
                return
            self.error = None
            self._written = max(self._written, covers)

    async def flush(self) -> None:
        """Every change made before this call is on disk when it returns."""
        target = self._changes
        while self._written < target:
            task = self._kick()
            await asyncio.shield(task)
            if self._written < target and self.error is not None:
                raise self.error

    def write_now(self) -> None:
        covers = self._changes
        self.file.save(self._state())
        self.error = None
        self._written = max(self._written, covers)
