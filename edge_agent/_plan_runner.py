"""Runs a plan through a module runtime and turns what happened into outcomes.

One module's failure is that module's outcome, never the end of the pass: whatever goes wrong
while acting on one module (a start that fails readiness, an `OSError`, a name the runtime
rejects) becomes a `Failed` with its reason, and the commands after it still run. Each outcome is
handed to `record` as soon as it is known, so the agent persists it before the next command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent._module_runtime import ModuleRuntime
from edge_agent._planner import Command, Replace, Start
from edge_agent._state import InstanceRecord
from modules import DigestMismatchError, ModelfleetError, RegistryUnreachableError

log = logging.getLogger("modelfleet.agent")


@dataclass(frozen=True)
class Applied:
    name: str
    record: InstanceRecord


@dataclass(frozen=True)
class Removed:
    name: str


@dataclass(frozen=True)
class Failed:
    name: str
    deployment: str | None
    reason: str
    # the desired configuration that failed (None when a removal failed)
    fingerprint: str | None
    # an earlier version of the module still serves
    still_serving: bool
    # worth another try without a new document (registry unreachable, disk full, bytes that did
    # not match their digest); a permanent failure waits for the desired state to change
    transient: bool = False


Outcome = Applied | Removed | Failed


class PlanRunner:
    def __init__(self, runtime: ModuleRuntime, record: Callable[[Outcome], None]) -> None:
        self.runtime = runtime
        self.record = record

    async def run(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes = []
        for command in commands:
            outcome = await self._carry_out(command)
            self.record(outcome)
            outcomes.append(outcome)
        return outcomes

    async def _carry_out(self, command: Command) -> Outcome:
        action = getattr(self.runtime, command.verb)
        try:
            result = await action(command)
        except Exception as exc:  # one module's failure must not stop the pass
            reason = str(exc) if isinstance(exc, ModelfleetError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ModelfleetError):
                log.exception("module %s: unexpected error during %s", command.name, command.verb)
            return self._failed(command, reason, transient=is_transient(exc))
        if isinstance(result, InstanceRecord):
            return Applied(command.name, result)
        return Removed(command.name)

    @staticmethod
    def _failed(command: Command, reason: str, *, transient: bool) -> Failed:
        wanted = command.desired if isinstance(command, Start | Replace) else None
        still_serving = not isinstance(command, Start)
        log.error(
            "module %s: %s; %s",
            command.name,
            reason,
            "the previous version keeps serving" if still_serving else "not started",
        )
        return Failed(
            name=command.name,
            deployment=wanted.deployment if wanted else None,
            reason=reason,
            fingerprint=wanted.fingerprint if wanted else None,
            still_serving=still_serving,
            transient=transient,
        )


def is_transient(exc: BaseException) -> bool:
    """Failures that time can fix: the registry comes back, disk space is freed, a download that
    was damaged on the way is fetched again. `init()` raising or a spec that does not validate
    will fail the same way every time. A runtime of its own (the simulator's) marks an error
    class `transient = True` to be classified the same way."""
    if isinstance(exc, RegistryUnreachableError | DigestMismatchError):
        return True
    from edge_agent._store import InsufficientDiskError  # loaded with the first module

    if isinstance(exc, InsufficientDiskError):
        return True
    return getattr(type(exc), "transient", False) is True
