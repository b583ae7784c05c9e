"""The config blob of a model artifact: everything `model show` needs without pulling the files."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.onnx_signature import OnnxSignature

MODEL_REPOSITORY_PREFIX = "models/"


class ModelFile(BaseModel):
    """One file of a model, stored as one layer so unchanged files are never sent twice."""

    model_config = ConfigDict(defer_build=True)

    path: str = Field(description="Path relative to the model's folder, POSIX separators")
    digest: str
    size: int
    onnx: OnnxSignature | None = None

    @field_validator("path")
    @classmethod
    def _relative_and_inside(cls, value: str) -> str:
        return safe_relative_path(value)


class ModelConfig(BaseModel):
    model_config = ConfigDict(defer_build=True)

    schema_version: str = "1"
    name: str
    version: int
    framework: str
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)
    created: datetime
    files: list[ModelFile]


def safe_relative_path(value: str) -> str:
    """Refuse paths that would escape the folder they are extracted into."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(f"unsafe file path in artifact: {value!r}")
    return str(path)
