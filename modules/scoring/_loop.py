"""Which event loop a scoring process runs on: uvloop when it is installed, else asyncio's own.

Per request the host does a fair share of event-loop work (reading the socket, waking for
the inference thread's answer, writing the reply); uvloop does that part in C on libuv, which
took 8-12% off the CPU time per request on the bench's small CNN with runs on the threads, a
few percent with runs on the loop (performance.md). It is optional: without it, or with
`MODELFLEET_UVLOOP=0` in the environment, asyncio's selector loop serves the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("modelfleet.scoring")
SWITCH = "MODELFLEET_UVLOOP"
T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the loop `loop_factory` picks."""
    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        log.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
        return runner.run(main)
