"""What the agent has applied, on disk, so a restart (even after `kill -9`) resumes instead of
starting over: accepted documents, last applied versions (the replay guard), and the module
instances it started (to re-adopt them rather than run a second copy)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

log = logging.getLogger(__name__)


class InstanceRecord(BaseModel):
    module: str
    deployment: str | None = None
    instance_id: str
    pid: int | None = None
    internal_port: int
    public_port: int
    repository: str
    digest: str
    version: int | None = None
    fingerprint: str
    startup_order: int = 4294967295
    restart_policy: str = "always"
    env: dict[str, str] = Field(default_factory=dict)
    execution_providers: list[str] | None = None
    health_probe: dict[str, Any] | None = None
    keys_version: int | None = None


class PersistedState(BaseModel):
    schema_version: int = 1
    # deployment name -> raw signed document (as received), the candidates for selection
    documents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # deployment name -> the raw document last applied (kept while a newer version is deferred)
    applied_documents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # deployment name -> highest version accepted: anything not above it is a replay
    last_versions: dict[str, int] = Field(default_factory=dict)
    modules: dict[str, InstanceRecord] = Field(default_factory=dict)
    # module name -> fingerprint that failed to start (not retried until the desired state changes)
    failed: dict[str, str] = Field(default_factory=dict)
    failed_reasons: dict[str, str] = Field(default_factory=dict)
    # deployment name -> the sealed (still encrypted) keys document as received
    sealed_keys: dict[str, dict[str, Any]] = Field(default_factory=dict)


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
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps(state.model_dump(mode="json"), indent=1, sort_keys=True).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
