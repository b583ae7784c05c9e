"""The module spec: the config blob of a module artifact, read by the agent and the scoring host.

It says what to run (entry script or zero-code ONNX), with which models, on which execution
providers, with what resources and health probe. Its JSON Schema is exported for editors
(`docs/schemas/module-spec.schema.json`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.model_config import ModelFile, safe_relative_path
from modules.names import NAME_PATTERN as NAME_PATTERN

MODULE_REPOSITORY_PREFIX = "modules/"
ExecutionProvider = Literal["tensorrt", "cuda", "rocm", "openvino", "dml", "coreml", "cpu"]


class ModelRef(BaseModel):
    """A registered model version pinned by manifest digest; files land in `<model_dir>/<name>/`."""

    model_config = ConfigDict(defer_build=True)

    name: str
    version: int
    digest: str
    files: list[ModelFile]


class Batching(BaseModel):
    model_config = ConfigDict(defer_build=True)

    max_batch_size: int = Field(8, ge=1, le=4096)
    max_wait_ms: float = Field(2.0, ge=0, le=10_000)


class Scoring(BaseModel):
    model_config = ConfigDict(defer_build=True)

    timeout_ms: int = Field(60_000, ge=1, description="Like Azure ML's scoring_timeout_ms")
    max_request_bytes: int = Field(8 << 20, ge=1)
    batching: Batching | None = None


class Resources(BaseModel):
    model_config = ConfigDict(defer_build=True)

    cpus: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    gpus: int = Field(0, ge=0)


class HealthProbe(BaseModel):
    model_config = ConfigDict(defer_build=True)

    path: str = "/v2/health/ready"
    period_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    initial_delay_s: float = Field(0.0, ge=0)


class ModuleSpec(BaseModel):
    model_config = ConfigDict(defer_build=True)

    schema_version: Literal["1"] = "1"
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str | None = None
    runtime: Literal["process", "docker"] = "process"
    entry_script: str | None = Field(
        None, description="Path inside the code layer; none means the zero-code ONNX handler"
    )
    requirements: list[str] = Field(default_factory=list, description="pip requirement lines")
    models: list[ModelRef] = Field(min_length=1)
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    sample_input: Any | None = None
    execution_providers: list[ExecutionProvider] = Field(default_factory=lambda: ["cpu"])
    resources: Resources = Field(default_factory=Resources)
    health_probe: HealthProbe = Field(default_factory=HealthProbe)
    scoring: Scoring = Field(default_factory=Scoring)
    created: datetime

    @field_validator("entry_script")
    @classmethod
    def _entry_inside(cls, value: str | None) -> str | None:
        return None if value is None else safe_relative_path(value)


def module_spec_json_schema() -> dict[str, Any]:
    schema = ModuleSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelfleet module spec"
    return schema
