"""What the runtime needs to start one instance of a module, and how it becomes ScoringSettings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edge_agent._leftovers import containers_dir as containers_dir  # where the agent's start looks too
from modules.artifact import model_dir_for, served_model_name
from modules.scoring import ScoringSettings
from modules.spec import ModuleSpec

# What the scoring host understands; the spec allows more (rocm, dml, coreml) for other runtimes.
_HOST_PROVIDERS = ("cuda", "tensorrt", "openvino", "cpu")


class InstanceConfig(BaseModel):
    """One instance of one module version on one internal port.

    The instance id goes into the settings file path, which is on the child's command line: that is
    how `adopt()` recognises its own processes after the agent restarts.
    """

    model_config = ConfigDict(defer_build=True, extra="forbid")

    instance_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    module: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model_dir: Path
    entry_script: Path | None = None
    code_dir: Path | None = None
    spec: ModuleSpec
    port: int = Field(ge=1, le=65535)
    env: dict[str, str] = Field(default_factory=dict)
    execution_providers: list[str] | None = None
    primary_key: SecretStr | None = None
    secondary_key: SecretStr | None = None

    def resolved_entry_script(self) -> Path | None:
        """A relative entry script is inside the code folder, as the spec writes it."""
        if self.entry_script is None:
            return None
        if self.entry_script.is_absolute() or self.code_dir is None:
            return self.entry_script
        return self.code_dir / self.entry_script

    def azureml_model_dir(self) -> Path:
        """Azure ML v1's AZUREML_MODEL_DIR for this module's models root.

        A folder not laid out as `<name>/<version>/` (a hand-made flat folder, or one written
        before modules used that layout, `<name>/<files>`) is served as it is.
        """
        wanted = model_dir_for(self.model_dir, self.spec.models)
        if wanted.is_dir() or wanted == self.model_dir:
            return wanted
        if len(self.spec.models) == 1 and (self.model_dir / self.spec.models[0].name).is_dir():
            return self.model_dir / self.spec.models[0].name
        return self.model_dir

    def scoring_settings(self) -> ScoringSettings:
        """The host's settings: providers filtered to what it knows, CPU always the last resort."""
        wanted = self.execution_providers or list(self.spec.execution_providers)
        providers = [p for p in wanted if p in _HOST_PROVIDERS] or ["cpu"]
        data: dict[str, Any] = {
            # model_dir is the store's models root; the host gets Azure ML v1's AZUREML_MODEL_DIR
            # (the one model's version folder, else the root) and the root for get_model_path.
            "model_dir": self.azureml_model_dir(),
            "models_root": self.model_dir,
            "model_name": served_model_name(self.spec),
            "service_name": self.module,  # the swagger title, as Azure ML titles it with the service
            "entry_script": self.resolved_entry_script(),
            "model_version": str(self.spec.version),
            "execution_providers": providers,
            "scoring_timeout_ms": self.spec.scoring.timeout_ms,
            "max_request_bytes": self.spec.scoring.max_request_bytes,
            "primary_key": self.primary_key,
            "secondary_key": self.secondary_key,
            "host": "127.0.0.1",
            "port": self.port,
        }
        if self.spec.scoring.batching is not None:
            data["batching"] = self.spec.scoring.batching.model_dump()
        # The agent may run several modules on a small device: one process each keeps the
        # supervision simple (one pid, one group) and the CPU shared fairly.
        if "processes" in ScoringSettings.model_fields:
            data["processes"] = 1
        return ScoringSettings.model_validate(data)


def settings_json(settings: ScoringSettings) -> str:
    """The settings as the host reads them from its file: never the keys, which are handed over
    through a pipe (`keys_json`) and so are never at rest on disk."""
    data = settings.model_dump(mode="json")
    for name in ("primary_key", "secondary_key"):
        data[name] = None
    return json.dumps(data, indent=2)


def keys_json(settings: ScoringSettings) -> bytes | None:
    """The keys in clear for the host's keys pipe; None for a module without auth."""
    if not settings.auth_enabled:
        return None
    data = {}
    for name in ("primary_key", "secondary_key"):
        secret = getattr(settings, name)
        data[name] = secret.get_secret_value() if secret is not None else None
    return json.dumps(data).encode()
