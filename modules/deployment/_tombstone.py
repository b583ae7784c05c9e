"""Signed deletions.

A retained message cleared on the broker proves nothing: anyone who can write the topic can
clear it. So a deletion is a document too: a tombstone, signed by the publisher, naming what it
deletes (a fleet-wide deployment, a per-device override, or a device's scoring keys) and carrying
a version above the last one of that document. It is published retained in the document's place;
its version becomes the floor below which nothing of that identity is accepted again, so a
captured older document cannot be replayed after the delete.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from modules.deployment._signature import Signature
from modules.names import NAME_PATTERN

TOMBSTONE_KIND = "tombstone"

# What a tombstone deletes: a deployment document (fleet-wide, or a per-device override when
# `device` is set) or the scoring keys of a deployment sealed to one device.
TombstoneOf = Literal["deployment", "keys"]


class Tombstone(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    kind: Literal["tombstone"] = TOMBSTONE_KIND
    of: TombstoneOf = "deployment"
    fleet: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    device: str | None = Field(None, min_length=1)
    version: int = Field(ge=1, description="Above the last version of the document it deletes")
    deleted_at: AwareDatetime = Field(alias="deletedAt")
    signature: Signature | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form, which is also what the signature covers (the signature aside)."""
        return self.model_dump(by_alias=True, exclude_unset=False, exclude_none=True, mode="json")

    @property
    def identity(self) -> str:
        return document_identity(self.name, self.device, of=self.of)


def document_identity(name: str, device: str | None, *, of: TombstoneOf = "deployment") -> str:
    """The key of a document's version floor: its name and its scope, never the topic it came on
    (a per-device override re-published on the fleet topic is another identity, and refused)."""
    scope = f"@{device}" if device else ""
    return f"{name}{scope}" if of == "deployment" else f"keys:{name}{scope}"


def is_tombstone(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == TOMBSTONE_KIND
