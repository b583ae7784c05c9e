"""Errors of the process runtime, in the project's one exception tree."""

from __future__ import annotations

from modules import ModelfleetError


class ModuleStartError(ModelfleetError):
    """A module instance did not come up: it exited, never got ready, failed its smoke test, or its
    environment could not be built. `reason` is what an operator needs to act on (the init error,
    the last log lines, pip's output), so the reconciler can report it and roll back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
