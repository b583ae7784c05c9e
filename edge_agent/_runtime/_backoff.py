"""Restart policy and backoff.

The policies mean what IoT Edge's edgeAgent documents: `never` leaves a stopped module stopped;
`on-failure` restarts a module that exited with an error; `on-unhealthy` restarts one that
exited with an error or fails its health probe; `always` restarts one that is not running for
any reason, unhealthy included. `always` is the default, as in IoT Edge.

The backoff differs from edgeAgent's on purpose, and only in its numbers: edgeAgent waits a cool-off
of 10 s doubling up to 5 minutes and gives up after 20 restarts (until the module has run for
10 minutes). Here the first delay is `backoff_base_s` (1 s by default: a process module restarts
in well under a second, and a device's only job is to serve), doubling up to `backoff_max_s`
(300 s, as edgeAgent), and there is no restart cap: an unattended device has nobody to restart a
module that was given up on, and the five-minute ceiling already bounds the cost. The streak
resets after `reset_after_s` (600 s) healthy, as edgeAgent's does after 10 minutes. The delay is a
pure function of the streak so the supervisor stays testable.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modules.deployment import RestartPolicy

# The policies under which a module that fails its health probe is ended and started again.
RESTARTS_UNHEALTHY: frozenset[RestartPolicy] = frozenset({"on-unhealthy", "always"})


class Backoff(BaseModel):
    """delay(n) = min(max_s, base_s * 2**(n-1)) for the n-th consecutive restart.

    The count goes back to zero once an instance has run healthy for `reset_after_s`, so a module
    that crashes once a week is restarted at once rather than after five minutes.
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    base_s: float = Field(1.0, gt=0)
    max_s: float = Field(300.0, gt=0)
    reset_after_s: float = Field(600.0, ge=0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number `attempt` (1-based) of a failure streak."""
        if attempt <= 0:
            return 0.0
        # Cap the exponent: 2**1100 overflows a float long after max_s has taken over.
        return min(self.max_s, self.base_s * 2 ** min(attempt - 1, 64))


def should_restart(policy: RestartPolicy, exit_code: int, *, unhealthy: bool = False) -> bool:
    """Whether an exited (or killed-for-unhealthiness) instance is started again."""
    if policy == "never":
        return False
    if policy == "always":
        return True
    if policy == "on-unhealthy" and unhealthy:
        return True
    # on-failure and on-unhealthy both restart a process that failed on its own.
    return exit_code != 0
