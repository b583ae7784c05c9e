"""When a request's work may run on the event loop instead of hopping to an inference thread.

The hop costs the loop a queue put, a wake-up through the self-pipe and a future callback, and
costs both threads a GIL hand-over: on a small model (the bench's CNN: ~0.1 ms of work) that
is more than the work itself. A model that takes longer must never hold the loop, though:
health probes, other clients' requests and timeouts all run there.

So the host measures. Every run is timed, on the thread or on the loop. Runs start on the
thread; once the fastest of the last few threaded runs is under the threshold (the fastest,
because a threaded time also counts waits for the GIL, which only ever add), the work moves
onto the loop, for bodies no larger than the largest one seen to run fast (a model's cost
tends to grow with its input). There every run is timed (how long the loop was held), and
when a running average of those times goes over the threshold the work moves back to the
thread at once, to be measured again over a window twice as long as before. A model that is
slow from the start therefore never runs on the loop; one that turns slow holds it for one run
if that run is over about ten times the threshold, for a few otherwise.

On a busy machine the process is sometimes descheduled in the middle of a run, which says
nothing about the model; on Linux such a run counts by the CPU time it used when the thread did
not block on its own (no voluntary context switch: no sleep, I/O or lock wait). A run that
blocked counts by its wall time: a model waiting on something holds the loop just the same.
"""

from __future__ import annotations

import threading
import time
from collections import deque

try:
    from resource import RUSAGE_THREAD, getrusage
except ImportError:  # not Linux: runs on the loop count by their wall time alone
    RUSAGE_THREAD = None

# Threaded runs looked at before moving onto the loop; doubled at every move back, up to the most.
_WINDOW = 8
_MAX_WINDOW = 1024
# Weight of the newest run in the running average of runs on the loop.
_ALPHA = 0.1
# A body may be this much larger than the largest seen to run fast and still run on the loop.
_SIZE_HEADROOM = 1.25


class InlineGate:
    """Per handler: whether the next run may go on the event loop, learned from timings."""

    def __init__(self, threshold_ms: float) -> None:
        self.threshold = threshold_ms / 1000.0
        self.inline = False
        self._threaded: deque[float] = deque(maxlen=_WINDOW)
        self.moves_back = 0
        self._average = 0.0
        self._max_fast_size = 0
        self._lock = threading.Lock()

    def allows(self, size: int) -> bool:
        """True when a run with a body of `size` bytes may run on the loop now."""
        return self.inline and size <= self._max_fast_size * _SIZE_HEADROOM

    def record_threaded(self, seconds: float, size: int) -> None:
        """A run on an inference thread took `seconds` (GIL waits included)."""
        if self.threshold <= 0:
            return
        with self._lock:  # several inference threads record at once
            if seconds < self.threshold and size > self._max_fast_size:
                self._max_fast_size = size
            self._threaded.append(seconds)
            window = self._threaded.maxlen
            if not self.inline and len(self._threaded) == window and min(self._threaded) < self.threshold:
                self.inline = True
                self._average = min(self._threaded)

    def record_inline(self, seconds: float, cpu_seconds: float, blocked: bool) -> None:
        """A run on the loop held it `seconds` and used `cpu_seconds` of its thread's CPU;
        `blocked`: it waited on its own (see `voluntary_switches`)."""
        if seconds > self.threshold and not blocked:
            seconds = cpu_seconds  # the rest of the time the process waited for a core
        self._average += _ALPHA * (seconds - self._average)
        if self._average > self.threshold:
            with self._lock:
                self.inline = False
                self.moves_back += 1
                window = min(_MAX_WINDOW, 2 * (self._threaded.maxlen or _WINDOW))
                self._threaded = deque(maxlen=window)


def voluntary_switches() -> int:
    """Times the calling thread has blocked on its own so far (-1 where it cannot be told, which
    makes every slow run count as blocked)."""
    if RUSAGE_THREAD is None:
        return -1
    return getrusage(RUSAGE_THREAD).ru_nvcsw


thread_time = time.thread_time
