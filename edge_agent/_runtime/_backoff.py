"""Restart policy and backoff, with the semantics of IoT Edge's edgeAgent.

The delay is a pure function of the number of consecutive failures so the supervisor stays
testable and the numbers match what users of IoT Edge already expect.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modules.deployment import RestartPolicy


class Backoff(BaseModel):
    """delay(n) = min(max_s, base_s * 2**(n-1)) for the n-th consecutive restart.

    The count goes back to zero once an instance has run healthy for `reset_after_s`, so a module
    that crashes once a week is restarted at once rather than after five minutes.
    """

    model_config = ConfigDict(frozen=True)

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
