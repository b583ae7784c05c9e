"""Driving a staged rollout from the publisher, with nothing but the broker in between.

Devices decide by themselves whether they are in the current step (a stable hash of device id and
deployment name, see docs/manifest.md), so advancing a step is publishing the same document again
with a higher version and `rollout.currentStep` + 1. This watcher only decides *when*: a step
advances once every online device in it has settled, healthy or failed within `maxFailureRatio`
(that is what the ratio allows), and stayed so for `minHealthySeconds`; the rollout aborts when the
failed share of the step exceeds `maxFailureRatio`. Aborting re-publishes
the previous document's content as a new, higher version (agents refuse lower versions), or
deletes the deployment when there was no previous document.

Everything the watcher publishes is built from verified documents only: the one it drives and the
previous one are re-verified against the workspace key before use, every publish refuses to go
over a retained document that does not verify (`publisher._trust`), and each new version is one
above the last verified one, never above whatever a forged document claims.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from modules.deployment import DeploymentDocument
from publisher import _deploy
from publisher._hub import FleetConnection
from publisher._status import STAGES, DeviceProgress, Stage, progress, stage_counts
from publisher._trust import deployment_slot
from publisher._workspace import Workspace

STEP_TIMEOUT_S = 600.0
"""How long one step may take to become healthy before the watcher gives up on it."""
UNSTAGED_MAX_FAILURE_RATIO = 0.0
"""A document without a rollout policy goes to every device at once: any failure aborts it."""


@dataclass
class RolloutResult:
    ok: bool
    name: str
    version: int  # the version the deployment ends on (the restored one after an abort)
    summary: str
    counts: dict[Stage, int] = field(default_factory=dict)
    failed_devices: list[str] = field(default_factory=list)


class ProgressDisplay:
    """Per-stage counts: rewritten in place on a terminal, one line per change otherwise (logs, CI).

    `final_summary=False` for a caller that prints the result's summary itself (the CLI prints it
    on stdout): shown here too, a person would read it twice."""

    def __init__(
        self, stream: TextIO | None = None, *, enabled: bool = True, final_summary: bool = True
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.final_summary = final_summary
        self.tty = self.stream.isatty()
        self._last: str | None = None

    def show(
        self, doc: DeploymentDocument, step: int, steps: list[int], devices: list[DeviceProgress]
    ) -> None:
        if not self.enabled:
            return
        in_step = [d for d in devices if d.in_step]
        counts = stage_counts(in_step)
        line = (
            f"{doc.name} v{doc.version} step {step + 1}/{len(steps)} ({steps[step]}%): "
            f"{len(in_step)}/{sum(d.targeted for d in devices)} devices | "
            + " ".join(f"{stage} {counts[stage]}" for stage in STAGES)
        )
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self, text: str) -> None:
        """The rollout's last word, which its result also carries."""
        if self.final_summary:
            self.message(text)
        elif self.tty and self._last is not None:
            self.stream.write("\n")  # end the line rewritten in place before the caller prints
            self.stream.flush()
            self._last = None

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty and self._last is not None:
            self.stream.write("\n")
        self._last = None
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass(frozen=True)
class _Verdict:
    done: bool
    failed: list[str]
    ratio: float
    devices: list[DeviceProgress]


def _judge(doc: DeploymentDocument, hub: FleetConnection) -> _Verdict:
    devices = progress(doc, hub.snapshot)
    members = [d for d in devices if d.in_step]
    failed = [d.device_id for d in members if d.stage == "failed"]
    # 0 of 0 is not done: a deployment no device is targeted by has not reached anyone (a wrong
    # condition, devices not up yet). A step that only happens to hold none of the targeted
    # devices (10% of five) has nothing to wait for.
    targeted = any(d.targeted for d in devices)
    # Failed members are settled too: below the ratio (else `drive` aborts first) they are what
    # the policy tolerates, and they would not turn healthy by waiting.
    done = targeted and all(d.stage in ("healthy", "offline", "failed") for d in members)
    return _Verdict(done, failed, len(failed) / len(members) if members else 0.0, devices)


async def drive(
    hub: FleetConnection,
    workspace: Workspace,
    doc: DeploymentDocument,
    previous: DeploymentDocument | Mapping[str, Any] | None,
    *,
    step_timeout_s: float = STEP_TIMEOUT_S,
    display: ProgressDisplay | None = None,
    max_failure_ratio: float = UNSTAGED_MAX_FAILURE_RATIO,
    on_step: Callable[[DeploymentDocument], Awaitable[None]] | None = None,
) -> RolloutResult:
    """Watch `doc` (already published) through every step; restore `previous` if it fails.

    Without a rollout policy the document is one step at 100%, judged with `max_failure_ratio`
    and no minimum healthy time. `on_step` runs after each step has passed, before the next is
    published (a hook for checks, or for a human gate).
    """
    display = display or ProgressDisplay(enabled=False)
    topic = _deploy.topic_for(hub, doc.name, doc.device)
    doc = _deploy.verified(doc, workspace, topic)
    loop = asyncio.get_running_loop()
    steps = doc.rollout.steps if doc.rollout else [100]
    step = doc.rollout.current_step if doc.rollout else 0
    min_healthy = doc.rollout.min_healthy_seconds if doc.rollout else 0
    max_failed = doc.rollout.max_failure_ratio if doc.rollout else max_failure_ratio
    while True:
        deadline = loop.time() + step_timeout_s
        healthy_since: float | None = None
        while True:
            verdict = _judge(doc, hub)
            display.show(doc, step, steps, verdict.devices)
            if verdict.ratio > max_failed:
                example = next(d for d in verdict.devices if d.in_step and d.stage == "failed")
                reason = (
                    f"{len(verdict.failed)} of {sum(d.in_step for d in verdict.devices)} devices failed "
                    f"in step {step + 1} ({steps[step]}%), above the {max_failed:.0%} allowed "
                    f"(e.g. {example.device_id}: {example.reason or 'no reason reported'})"
                )
                return await _abort(hub, workspace, doc, previous, reason, verdict, display, step_timeout_s)
            if verdict.done:
                healthy_since = loop.time() if healthy_since is None else healthy_since
                remaining = min_healthy - (loop.time() - healthy_since)
                if remaining <= 0:
                    break
                await hub.wait_changed(min(remaining, 1.0))
                continue
            healthy_since = None
            if loop.time() > deadline:
                reason = f"step {step + 1} ({steps[step]}%) was not healthy within {step_timeout_s:g} s"
                if not any(d.targeted for d in verdict.devices):
                    reason = f"no device was targeted within {step_timeout_s:g} s"
                return await _abort(hub, workspace, doc, previous, reason, verdict, display, step_timeout_s)
            await hub.wait_changed(1.0)
        if on_step is not None:
            await on_step(doc)
        if step == len(steps) - 1:
            counts = stage_counts([d for d in verdict.devices if d.in_step])
            summary = f"{doc.name} version {doc.version}: {counts['healthy']} devices healthy"
            if counts["offline"]:
                summary += f", {counts['offline']} offline (they apply it when they reconnect)"
            display.summary(summary)
            return RolloutResult(True, doc.name, doc.version, summary, counts)
        superseded = _superseded(hub, doc)
        if superseded is not None:
            display.message(superseded)
            return RolloutResult(False, doc.name, doc.version, superseded, stage_counts([]))
        step += 1
        assert doc.rollout is not None
        rollout = {**doc.to_json_dict()["rollout"], "currentStep": step}
        version = _deploy.next_version(hub, workspace, doc.name, doc.device)
        doc = await _deploy.publish(hub, workspace, _deploy.republished(doc, version, rollout=rollout))
        display.message(f"{doc.name}: step {step + 1}/{len(steps)} ({steps[step]}%) as version {doc.version}")


async def _abort(
    hub: FleetConnection,
    workspace: Workspace,
    doc: DeploymentDocument,
    previous: DeploymentDocument | Mapping[str, Any] | None,
    reason: str,
    verdict: _Verdict,
    display: ProgressDisplay,
    timeout_s: float,
) -> RolloutResult:
    counts = stage_counts([d for d in verdict.devices if d.in_step])
    display.message(f"{doc.name} version {doc.version}: aborting: {reason}")
    if previous is None:
        await _deploy.delete(hub, doc.name, device=doc.device, workspace=workspace)
        summary = f"rollout of {doc.name} version {doc.version} aborted: {reason}; deployment removed"
        display.summary(summary)
        return RolloutResult(False, doc.name, doc.version, summary, counts, verdict.failed)
    # What is restored was read back from the broker once: it must still prove to be ours.
    before = _deploy.verified(previous, workspace, _deploy.topic_for(hub, doc.name, doc.device))
    version = _deploy.next_version(hub, workspace, doc.name, doc.device)
    restored = await _deploy.publish(hub, workspace, _deploy.republished(before, version))
    display.message(f"{doc.name}: restoring version {before.version} as version {restored.version}")
    back = await _converge(hub, restored, timeout_s)
    summary = (
        f"rollout of {doc.name} version {doc.version} aborted: {reason}; "
        f"restored version {before.version}'s content as version {restored.version}"
        + ("" if back else f" (not yet healthy everywhere after {timeout_s:g} s)")
    )
    display.summary(summary)
    return RolloutResult(False, doc.name, restored.version, summary, counts, verdict.failed)


def _superseded(hub: FleetConnection, doc: DeploymentDocument) -> str | None:
    """A verified newer version on the broker (another `deploy update`) ends this rollout: its
    next step must not overwrite it. Something unverified there is `publish`'s to refuse."""
    newer = deployment_slot(hub, doc.name, doc.device)
    held = newer.document or newer.tombstone
    if held is None or held.version <= doc.version:
        return None
    what = "deleted" if newer.tombstone is not None else "superseded"
    return f"rollout of {doc.name} version {doc.version} stopped: {what} by version {held.version}"


async def _converge(hub: FleetConnection, doc: DeploymentDocument, timeout_s: float) -> bool:
    """Wait until every targeted online device reports `doc` applied; tell whether they did.
    No targeted device at all is not "they did": nothing came back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        devices = progress(doc, hub.snapshot)
        members = [d for d in devices if d.in_step]
        if (
            members
            and all(d.stage in ("healthy", "offline", "failed") for d in members)
            and all(
                (seen := hub.snapshot.reports[d.device_id].deployments.get(doc.name)) is not None
                and seen.version >= doc.version
                for d in members
                if d.stage != "offline"
            )
        ):
            return True
        await hub.wait_changed(1.0)
    return False
