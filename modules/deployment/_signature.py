"""The detached signature every signed document carries, in a module of its own: the reported
state and sealed keys are signed too, and checking them must not load the deployment contract."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Signature(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    key_id: str = Field(
        alias="keyId", pattern=r"^[0-9a-f]{16}$", description="First 16 hex of sha256(raw public key)"
    )
    alg: Literal["ed25519"] = "ed25519"
    value: str = Field(description="Base64 Ed25519 signature of the canonical form without `signature`")
