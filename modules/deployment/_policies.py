"""The few manifest values an agent's persisted state names (a module's restart policy and
startup order), apart from the manifest's models: reading the state file at start must not load
the whole manifest."""

from __future__ import annotations

from typing import Literal

RestartPolicy = Literal["never", "on-failure", "on-unhealthy", "always"]
DEFAULT_RESTART_POLICY: RestartPolicy = "always"
"""IoT Edge's documented default: what a module without `restartPolicy` gets, and what the
publisher writes unless told otherwise."""
STARTUP_ORDER_MAX = 4_294_967_295
"""`startupOrder` is an unsigned 32-bit integer in IoT Edge; a module that gives none starts
after every module that does, as if it had this value."""
