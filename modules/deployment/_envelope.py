"""The deployment document: a manifest plus what the agent needs to decide whether to apply it.

The envelope names the deployment, orders its versions (replays are refused by version), says
which devices it targets and with what priority, how far a rollout has got, and carries the
publisher's detached signature over everything else. Unlike the manifest, the envelope is
modelfleet's own format, so unknown fields are refused: an agent must not silently ignore a
field that a newer publisher meant to change its behaviour.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from modules.deployment._condition import Condition, parse_condition
from modules.deployment._errors import ConditionSyntaxError
from modules.deployment._manifest import Manifest
from modules.deployment._signature import Signature
from modules.names import NAME_PATTERN

DEFAULT_MIN_HEALTHY_SECONDS = 300
"""How long a rollout step must stay healthy before the next, when the document does not say."""
DEFAULT_MAX_FAILURE_RATIO = 0.05
"""The failed share of a step's devices that aborts a rollout, when the document does not say."""


class _Strict(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)


class Rollout(_Strict):
    """Staged exposure: only devices in the first `steps[current_step]` percent apply it."""

    steps: list[int] = Field(min_length=1, description="Cumulative percentages, e.g. [10, 50, 100]")
    current_step: int = Field(0, ge=0, alias="currentStep")
    min_healthy_seconds: int = Field(
        DEFAULT_MIN_HEALTHY_SECONDS,
        ge=0,
        alias="minHealthySeconds",
        description="How long a step must stay healthy before the next",
    )
    max_failure_ratio: float = Field(
        DEFAULT_MAX_FAILURE_RATIO,
        ge=0,
        le=1,
        alias="maxFailureRatio",
        description="Failed share of devices that halts it",
    )

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= step <= 100 for step in steps):
            raise ValueError("rollout steps are percentages between 1 and 100")
        if any(later <= earlier for earlier, later in pairwise(steps)):
            raise ValueError("rollout steps must strictly increase")
        return steps

    @model_validator(mode="after")
    def _step_exists(self) -> Rollout:
        if self.current_step >= len(self.steps):
            raise ValueError(f"currentStep {self.current_step} is past the last of {len(self.steps)} steps")
        return self

    @property
    def percent(self) -> int:
        return self.steps[self.current_step]


class DeploymentDocument(_Strict):
    fleet: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1, description="Must increase with every publish of this deployment name")
    target_condition: str = Field(
        "*", alias="targetCondition", description="Condition over tags and properties; '*' is every device"
    )
    priority: int = 0
    rollout: Rollout | None = None
    layered: bool = False
    device: str | None = Field(
        None, min_length=1, description="A per-device override: only this device id, above all others"
    )
    content: Manifest
    created_at: AwareDatetime = Field(alias="createdAt")
    signature: Signature | None = None

    @field_validator("target_condition")
    @classmethod
    def _condition_parses(cls, text: str) -> str:
        try:
            parse_condition(text)
        except ConditionSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return text

    @model_validator(mode="after")
    def _base_is_whole(self) -> DeploymentDocument:
        # A base is what layers merge over: it must say everything, not set parts of a twin.
        if not self.layered and (problem := self.content.base_problem()) is not None:
            raise ValueError(f"a base deployment (layered: false): {problem}")
        return self

    @property
    def condition(self) -> Condition:
        return parse_condition(self.target_condition)

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: exactly the fields that were set, which is also what the signature covers."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")
