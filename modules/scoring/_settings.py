"""What one scoring host needs to know, validated once at the boundary.

The edge agent writes these as JSON for `python -m modules.scoring --settings-file`, the CLI builds
them from flags; both end up here so the host itself never parses loose strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ProviderName = Literal["cuda", "tensorrt", "openvino", "cpu"]


def cpu_count() -> int:
    # Respect CPU affinity (containers, taskset) rather than the machine's total.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class BatchingSettings(BaseModel):
    """Dynamic batching: merge concurrent requests into one ONNX Runtime call."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)


class ScoringSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    # What AZUREML_MODEL_DIR points at: the model's files directly inside (one model), or the
    # root of `<name>/<version>/<files>` (several).
    model_dir: Path
    # The root of `<name>/<version>/<files>` that `Model.get_model_path` searches, as Azure ML
    # v1's `azureml-models` folder; a packaged module's model_dir lies inside it. None: model_dir.
    models_root: Path | None = None
    entry_script: Path | None = None
    # Name used by the v2 routes; derived from the model folder when not given.
    model_name: str | None = None
    model_version: str = "1"
    # The service's name, the title of /swagger.json as Azure ML's SERVICE_NAME; for a deployed
    # module, the module's name. None: the SERVICE_NAME variable, else the model's name.
    service_name: str | None = None
    execution_providers: list[ProviderName] = Field(
        default_factory=lambda: ["cuda", "tensorrt", "openvino", "cpu"]
    )
    batching: BatchingSettings | None = None
    scoring_timeout_ms: int = Field(60_000, gt=0)
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0)
    primary_key: SecretStr | None = None
    secondary_key: SecretStr | None = None
    # How many inferences may run at once in each process (threads); each ONNX Runtime call then
    # gets intra_op_threads threads, so together they fill the device without oversubscribing
    # it. Default: CPUs (at most 4) shared out over the processes, since threads beyond that
    # only queue for the GIL and the cores.
    inference_workers: int = Field(default_factory=lambda: min(cpu_count(), 4), ge=1)
    intra_op_threads: int | None = Field(None, ge=1)
    # An entry-script run measured to take less than this moves from the inference threads onto
    # the event loop, where it saves the hop between the two; one that takes longer goes back
    # (see _inline.py). 0: always on the threads.
    inline_below_ms: float = Field(1.0, ge=0)
    # Worker processes sharing the port, each with its own init() and model copy. 1 here (the
    # Python API and the agent's settings file: memory is the device owner's call); the CLI
    # defaults to the number of CPUs.
    processes: int = Field(1, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8890, ge=0, le=65535)
    access_log: bool = False
    # Development: a failing run() answers with its exception text instead of a generic message
    # with the request id. Off by default: that text can hold secrets or other clients' data.
    error_details: bool = False
    # Origins allowed to call from a browser (Azure ML's --access_control_allow_origins); "*"
    # for any. Preflights on every route are answered by the host when this is set.
    cors_origins: list[str] = Field(default_factory=list)
    # Text and JSON answers of at least this many bytes are gzip-compressed for clients that
    # send `Accept-Encoding: gzip`; None: never. Below about 1 KB gzip saves too little to pay for.
    gzip_min_bytes: int | None = Field(1024, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _share_workers_over_processes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("inference_workers") is None:
            processes = data.get("processes") or 1
            if isinstance(processes, int) and processes > 1:
                data = {**data, "inference_workers": max(1, min(cpu_count(), 4) // processes)}
        return data

    @field_validator("execution_providers")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is needed (e.g. cpu)")
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.primary_key or self.secondary_key)

    def resolved_intra_op_threads(self) -> int:
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, cpu_count() // (self.inference_workers * self.processes))
