"""What a device reports about itself: the payloads of the reported, status, telemetry and method
topics. The agent writes them, `modelfleet status` and the simulator read them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

RuntimeStatus = Literal[
    "pending", "downloading", "starting", "running", "backoff", "unhealthy", "stopped", "failed"
]
Health = Literal["healthy", "unhealthy", "unknown"]
DeploymentOutcome = Literal["applied", "applying", "failed", "refused", "not-targeted", "removed"]


class ModuleState(BaseModel):
    name: str
    deployment: str | None = None
    module: str | None = None  # repository, e.g. modules/iris-svc
    version: int | None = None  # module package version
    digest: str | None = None
    status: RuntimeStatus = "pending"
    health: Health = "unknown"
    port: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    restart_count: int = 0
    started_at: datetime | None = None
    exited_at: datetime | None = None
    next_restart_at: datetime | None = None
    last_error: str | None = None
    inference_count: int = 0
    inference_errors: int = 0
    latency_ms_avg: float | None = None


class DeploymentState(BaseModel):
    name: str
    version: int
    outcome: DeploymentOutcome
    reason: str | None = None
    at: datetime


class Refusal(BaseModel):
    """A document the agent would not apply, and why: the publisher sees it in `status`."""

    topic: str
    deployment: str | None = None
    version: int | None = None
    reason: str
    at: datetime


class DeviceInfo(BaseModel):
    agent_version: str
    platform: str
    python: str
    execution_providers: list[str] = Field(default_factory=list)
    public_key: str | None = Field(None, description="X25519 key (base64) that scoring keys are sealed to")
    disk_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None


class ReportedState(BaseModel):
    device_id: str
    fleet: str
    seq: int = Field(0, description="Increases with every report from one agent process run")
    at: datetime
    tags: dict[str, Any] = Field(default_factory=dict)
    device: DeviceInfo
    deployments: dict[str, DeploymentState] = Field(default_factory=dict)
    modules: dict[str, ModuleState] = Field(default_factory=dict)
    refused: list[Refusal] = Field(default_factory=list, description="Most recent first, bounded")


class Presence(BaseModel):
    device_id: str
    online: bool
    at: datetime | None = None  # None in the last-will message, which is written at connect time


class MethodRequest(BaseModel):
    payload: dict[str, Any] = Field(default_factory=dict)
    response_topic: str | None = None


class MethodResponse(BaseModel):
    status: int  # HTTP-like: 200 ok, 400 bad request, 404 unknown method/module, 500 failure
    payload: Any = None
