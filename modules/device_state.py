"""What a device reports about itself: the payloads of the reported, status, telemetry and method
topics. The agent writes them, `modelfleet status` and the simulator read them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from modules.deployment import Signature, TrustError, sign_mapping, verify_document

RuntimeStatus = Literal[
    "pending", "downloading", "starting", "running", "backoff", "unhealthy", "stopped", "failed"
]
Health = Literal["healthy", "unhealthy", "unknown"]
DeploymentOutcome = Literal["applied", "applying", "failed", "refused", "not-targeted", "removed"]


class Download(BaseModel):
    digest: str
    done_bytes: int
    total_bytes: int


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
    # the resource limits in force and how they are enforced; None without limits
    limits: str | None = None
    # a version of the module being downloaded (while this entry may still describe the one that
    # serves): its digest and bytes so far of the bytes it needs
    download: Download | None = None
    started_at: datetime | None = None
    exited_at: datetime | None = None
    next_restart_at: datetime | None = None
    last_error: str | None = None
    inference_count: int = 0
    inference_errors: int = 0
    latency_ms_avg: float | None = None
    # what the module reports through its twin (`modules.scoring.twin.report`); None: nothing
    reported_properties: dict[str, Any] | None = None


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


METHOD_REQUEST_MAX_TTL_S = 600
"""The longest a signed method request may stay valid: an agent refuses an expiry further out, so
the set of request ids it must remember (to refuse a replay) stays small and short-lived."""


class MethodRequest(BaseModel):
    """A direct-method request, signed by the publisher over everything that steers it: which
    fleet, device and method, the request id (the last topic level, which also names the fixed
    response topic) and an expiry. A replayed id or an expired request is refused."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    fleet: str
    device: str
    method: str
    request_id: str
    expires_at: AwareDatetime
    payload: dict[str, Any] = Field(default_factory=dict)
    signature: Signature | None = None


def sign_method_request(request: MethodRequest, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The wire form of a signed request."""
    return sign_mapping(request.model_dump(mode="json", exclude={"signature"}), private_key)


def verify_method_request(
    wire: Mapping[str, Any],
    trusted: Iterable[Ed25519PublicKey],
    *,
    fleet: str,
    device: str,
    method: str,
    request_id: str,
    now: datetime,
) -> MethodRequest:
    """The request if a trusted key signed it for exactly this fleet, device, method and id and
    it has not expired; `TrustError` (a `DeploymentError`) or `ValueError` otherwise."""
    what = f"method request {request_id!r}"
    verify_document(wire, trusted, what=what)
    request = MethodRequest.model_validate(wire)
    if (request.fleet, request.device, request.method, request.request_id) != (
        fleet,
        device,
        method,
        request_id,
    ):
        raise TrustError(f"{what} was signed for another fleet, device, method or id than its topic's")
    if request.expires_at <= now:
        raise TrustError(f"{what} expired at {request.expires_at.isoformat()}")
    if (request.expires_at - now).total_seconds() > METHOD_REQUEST_MAX_TTL_S:
        raise TrustError(f"{what} stays valid for more than {METHOD_REQUEST_MAX_TTL_S} s")
    return request


class MethodResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)

    status: int  # HTTP-like: 200 ok, 400 bad request, 404 unknown method/module, 500 failure
    payload: Any = None
