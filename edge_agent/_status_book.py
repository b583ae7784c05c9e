"""The only writer of the device's reported state.

Runtimes, the plan runner's outcomes, the intake's refusals and the inference scrapes all land
here; the report, the telemetry, `getState` and the local status endpoint all read from here. One
writer is what makes the report consistent: a module's entry is never half from one source and
half from another, and every change asks for exactly one (coalesced) report.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from modules.deployment import DeploymentRef
from modules.device_state import DeploymentState, DeviceInfo, Download, ModuleState, Refusal, ReportedState

REFUSALS_KEPT = 20
PROGRESS_PERIOD_S = 1.0


Clock = Callable[[], datetime]
"""What tells the agent the time (aware, UTC). A device's own clock, which may be off: every time
the agent reports and every expiry it judges comes from one clock, so its reports are consistent
with each other however far that clock is from the publisher's."""


def now() -> datetime:
    return datetime.now(UTC)


class StatusBook:
    def __init__(
        self,
        device_id: str,
        fleet: str,
        tags: Mapping[str, Any],
        on_change: Callable[[], None],
        clock: Clock = now,
    ) -> None:
        self.clock = clock
        self.device_id = device_id
        self.fleet = fleet
        self.tags = dict(tags)
        self._on_change = on_change
        self.modules: dict[str, ModuleState] = {}
        self.deployments: dict[str, DeploymentState] = {}
        self.refused: deque[Refusal] = deque(maxlen=REFUSALS_KEPT)
        self.seq = 0
        self._progress_reported: dict[str, float] = {}  # module -> monotonic time of the last report
        # module -> its twin's reported properties (`modules.scoring.twin`), whatever its entry
        self._reported_properties: dict[str, dict[str, Any]] = {}

    # -- modules ------------------------------------------------------------------------------

    def module_changed(self, name: str, state: ModuleState, failure: str | None = None) -> None:
        """A runtime's view of a module; `failure` is the standing reason its desired
        configuration could not be applied (kept visible while an older version serves)."""
        previous = self.modules.get(name)
        if previous is not None and previous.digest == state.digest and state.inference_count == 0:
            # counts come from the heartbeat's scrape; a status change must not zero them
            state = state.model_copy(
                update={
                    "inference_count": previous.inference_count,
                    "inference_errors": previous.inference_errors,
                    "latency_ms_avg": previous.latency_ms_avg,
                }
            )
        if failure and state.last_error is None:
            state = state.model_copy(update={"last_error": failure})
        self.modules[name] = self._with_reported(name, state)
        self._on_change()

    def module_reported(self, name: str, properties: dict[str, Any] | None) -> None:
        """The properties a module reports about itself (None: none)."""
        if properties is None:
            self._reported_properties.pop(name, None)
        else:
            self._reported_properties[name] = properties
        state = self.modules.get(name)
        if state is not None and state.reported_properties != properties:
            self.modules[name] = state.model_copy(update={"reported_properties": properties})
            self._on_change()

    def _with_reported(self, name: str, state: ModuleState) -> ModuleState:
        properties = self._reported_properties.get(name)
        if state.reported_properties == properties:
            return state
        return state.model_copy(update={"reported_properties": properties})

    def module_waiting(self, name: str, deployment: str | None, reason: str) -> None:
        self.modules[name] = ModuleState(
            name=name, deployment=deployment, status="pending", last_error=reason
        )
        self._on_change()

    def module_failed(
        self, name: str, deployment: str | None, reason: str, *, still_serving: bool, retrying: bool = False
    ) -> None:
        """With `still_serving`, the previous version keeps its entry and carries the reason; a
        module that will be retried by itself is pending, not failed."""
        current = self.modules.get(name)
        if current is not None and still_serving:
            self.modules[name] = current.model_copy(update={"last_error": reason})
        else:
            self.modules[name] = ModuleState(
                name=name,
                deployment=deployment,
                status="pending" if retrying else "failed",
                last_error=reason,
            )
        self._on_change()

    def download_progress(
        self, name: str, deployment: str | None, digest: str, done: int, total: int
    ) -> None:
        """Bytes so far of a version being downloaded; at most one report a second, and the last."""
        state = self.modules.get(name) or ModuleState(name=name, deployment=deployment, status="downloading")
        download = Download(digest=digest, done_bytes=done, total_bytes=total)
        self.modules[name] = state.model_copy(update={"download": None if done >= total else download})
        at = time.monotonic()
        if done >= total or at - self._progress_reported.get(name, 0.0) >= PROGRESS_PERIOD_S:
            self._progress_reported[name] = at
            self._on_change()

    def error_cleared(self, name: str) -> None:
        """The module's last error is no longer true (its configuration now runs)."""
        state = self.modules.get(name)
        if state is not None and state.last_error is not None:
            self.modules[name] = state.model_copy(update={"last_error": None})
            self._on_change()

    def deployments_applying(self, refs: Iterable[DeploymentRef]) -> None:
        """Work on these deployments has started: until it ends they are not what runs."""
        at = self.clock()
        for ref in refs:
            current = self.deployments.get(ref.name)
            if current is None or current.version != ref.version or current.outcome != "applying":
                self.deployments[ref.name] = DeploymentState(
                    name=ref.name, version=ref.version, outcome="applying", at=at
                )
        self._on_change()

    def module_removed(self, name: str) -> None:
        self._reported_properties.pop(name, None)
        if self.modules.pop(name, None) is not None:
            self._on_change()

    def module_stats(self, name: str, count: int, errors: int, latency_ms_avg: float | None) -> None:
        state = self.modules.get(name)
        if state is None:
            return
        update = {"inference_count": count, "inference_errors": errors, "latency_ms_avg": latency_ms_avg}
        if any(getattr(state, k) != v for k, v in update.items()):
            self.modules[name] = state.model_copy(update=update)
            self._on_change()

    # -- deployments --------------------------------------------------------------------------

    def refusal(
        self, topic: str, reason: str, deployment: str | None = None, version: int | None = None
    ) -> None:
        self.refused.appendleft(
            Refusal(topic=topic, deployment=deployment, version=version, reason=reason, at=self.clock())
        )
        self._on_change()

    def deployment_removed(self, name: str, version: int) -> None:
        self.deployments[name] = DeploymentState(
            name=name, version=version, outcome="removed", at=self.clock()
        )
        self._on_change()

    def deployments_judged(self, states: Iterable[DeploymentState]) -> None:
        for state in states:
            self.deployments[state.name] = state
        self._on_change()

    # -- reading ------------------------------------------------------------------------------

    def reported(self, device: DeviceInfo) -> ReportedState:
        self.seq += 1
        return ReportedState(
            device_id=self.device_id,
            fleet=self.fleet,
            seq=self.seq,
            at=self.clock(),
            tags=self.tags,
            device=device,
            deployments=dict(self.deployments),
            modules={name: self._with_reported(name, m) for name, m in self.modules.items()},
            refused=list(self.refused),
        )

    def telemetry(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "at": self.clock().isoformat(),
            "modules": {
                name: {
                    "status": m.status,
                    "inference_count": m.inference_count,
                    "inference_errors": m.inference_errors,
                    "latency_ms_avg": m.latency_ms_avg,
                }
                for name, m in self.modules.items()
            },
        }


def judge_deployments(
    applied: Iterable[DeploymentRef],
    deferred: Iterable[DeploymentRef],
    others: Iterable[tuple[str, int]],
    owners: Mapping[str, str],
    failures: Mapping[str, str],
    retrying: Mapping[str, str] | None = None,
    clock: Clock = now,
) -> list[DeploymentState]:
    """Each deployment's outcome on this device. `applied` are the selected documents, `deferred`
    the newer versions this device is not in the rollout step of yet, `others` (name, version) of
    documents that do not target it; `owners` maps each wanted module (runnable here or not) to its
    deployment, `failures` module name -> why it is not applied, `retrying` module name -> why it is
    not applied yet (a transient failure, retried by itself): such a deployment is still applying."""
    retrying = retrying or {}
    at = clock()
    states: list[DeploymentState] = []
    judged: set[str] = set()
    for doc in applied:
        mine = sorted(n for n, owner in owners.items() if owner == doc.name)
        problems = [f"{n}: {failures[n]}" for n in mine if n in failures]
        pending = [f"{n}: {retrying[n]}" for n in mine if n in retrying and n not in failures]
        outcome = "failed" if problems else "applying" if pending else "applied"
        states.append(
            DeploymentState(
                name=doc.name,
                version=doc.version,
                outcome=outcome,
                reason="; ".join(problems or pending) or None,
                at=at,
            )
        )
        judged.add(doc.name)
    for doc in deferred:
        if doc.name not in judged:
            states.append(
                DeploymentState(
                    name=doc.name,
                    version=doc.version,
                    outcome="not-targeted",
                    reason="not in the rollout step yet",
                    at=at,
                )
            )
            judged.add(doc.name)
    for name, version in others:
        if name not in judged:
            states.append(DeploymentState(name=name, version=version, outcome="not-targeted", at=at))
    return states
