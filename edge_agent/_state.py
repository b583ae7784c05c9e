"""What the agent has applied, on disk, so a restart (even after `kill -9`) resumes instead of
starting over: accepted documents, last applied versions (the replay guard), the module instances
it started (to re-adopt them rather than run a second copy) and what failed (not to retry it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
    def __init__(self, path: Path) -> None:
        self.path = path

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

    def save(self, state: PersistedState) -> None:
        """Write-then-rename with fsync: a crash leaves the old or the new file, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # compact: indent turns off json's C encoder, and the file is rewritten often
        data = json.dumps(state.model_dump(mode="json"), separators=(",", ":"), sort_keys=True).encode()
        write_atomic(self.path, data, mode=0o600)
