"""What a rollout looked like from the control plane: per-state device counts over time.

A person rehearsing a rollout wants to know how long it took to reach 50%, 90% and all devices,
what failed and why, and what it cost the broker; a test wants the same as numbers. The timeline
is built from what the broker carries (every device's retained report and presence, as
`modelfleet status` sees them), kept incrementally as messages arrive, so sampling a fleet of
10,000 devices is a copy of a few counters and never a pass over the fleet.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules import ConfigError

# The states a device is in for one deployment, in the order a rollout moves through them.
STATES = ("waiting", "downloading", "applying", "healthy", "unhealthy", "failed", "not-targeted", "offline")
_COLOURS = {
    "waiting": "#c7c7c7",
    "downloading": "#6baed6",
    "applying": "#fdd0a2",
    "healthy": "#31a354",
    "unhealthy": "#fd8d3c",
    "failed": "#de2d26",
    "not-targeted": "#efedf5",
    "offline": "#636363",
}


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the timeline started
    counts: dict[str, int]


def classify(report: dict[str, Any] | None, deployment: str, online: bool) -> tuple[str, str | None]:
    """A device's state for `deployment` from its report (parsed JSON) and presence; the reason
    when it failed. Plain dict access: this runs on every report of every device."""
    if not online:
        return "offline", None
    seen = (report or {}).get("deployments", {}).get(deployment)
    modules = [m for m in (report or {}).get("modules", {}).values() if m.get("deployment") == deployment]
    if any(m.get("status") == "downloading" or m.get("download") for m in modules):
        return "downloading", None
    if seen is None:
        return "waiting", None
    outcome = seen.get("outcome")
    if outcome == "failed":
        return "failed", seen.get("reason") or next((m.get("last_error") for m in modules), None)
    if outcome == "not-targeted" and seen.get("reason"):
        return "waiting", None  # targeted, outside the rollout's current step: its turn comes
    if outcome in ("not-targeted", "removed"):
        return "not-targeted", None
    if outcome == "applied":
        if any(m.get("status") == "failed" for m in modules):
            return "failed", next(m.get("last_error") for m in modules if m.get("status") == "failed")
        if modules and all(m.get("status") == "running" and m.get("health") != "unhealthy" for m in modules):
            return "healthy", None
        return "unhealthy", None
    return "applying", None


class Timeline:
    """Per-state counts of one deployment over the fleet, sampled every `every_s` seconds, plus
    messages and bytes per device and failures by reason. `fleet.timeline(name)` makes one that
    is fed by the fleet's watcher; `stop()` ends the sampling."""

    def __init__(self, deployment: str, device_ids: Iterable[str], *, every_s: float = 0.5) -> None:
        self.deployment = deployment
        self.every_s = every_s
        self._reports: dict[str, dict[str, Any] | None] = {}
        self._online: dict[str, bool] = {}
        self.state: dict[str, str] = {}
        self.reasons: dict[str, str | None] = {}
        self.counts: Counter[str] = Counter()
        for device_id in device_ids:
            self.add_device(device_id)
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.events: list[tuple[float, str]] = []
        self.changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._began = self._loop.time()
        self._task: asyncio.Task[None] | None = self._loop.create_task(self._sample(), name="sim-timeline")

    def add_device(self, device_id: str) -> None:
        if device_id not in self.state:
            self.state[device_id] = "waiting"
            self.counts["waiting"] += 1

    @property
    def elapsed(self) -> float:
        return self._loop.time() - self._began

    def mark(self, text: str) -> None:
        """Something that happened (a scenario step), drawn on the plot at its time."""
        self.events.append((round(self.elapsed, 3), text))

    # -- fed by the fleet's watcher ------------------------------------------------------------

    def on_report(self, device_id: str, payload: bytes) -> None:
        self.messages[device_id] += 1
        self.bytes[device_id] += len(payload)
        try:
            report = json.loads(payload) if payload else None
        except ValueError:
            report = None
        self._reports[device_id] = report if isinstance(report, dict) else None
        self._update(device_id)

    def on_presence(self, device_id: str, payload: bytes, online: bool) -> None:
        self.messages[device_id] += 1
        self.bytes[device_id] += len(payload)
        self._online[device_id] = online
        self._update(device_id)

    def set_online(self, device_id: str, online: bool) -> None:
        """The fleet's own knowledge (a cut link) ahead of the broker's last will."""
        self._online[device_id] = online
        self._update(device_id)

    def _update(self, device_id: str) -> None:
        self.add_device(device_id)
        state, reason = classify(
            self._reports.get(device_id), self.deployment, self._online.get(device_id, True)
        )
        old = self.state[device_id]
        if state != old:
            self.counts[old] -= 1
            self.counts[state] += 1
            self.state[device_id] = state
        self.reasons[device_id] = reason
        self.changed.set()

    async def _sample(self) -> None:
        while True:
            self.samples.append(Sample(round(self.elapsed, 3), {s: self.counts[s] for s in STATES}))
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self.samples.append(Sample(round(self.elapsed, 3), {s: self.counts[s] for s in STATES}))

    # -- what it says --------------------------------------------------------------------------

    def share(self, state: str) -> float:
        """Of the devices the deployment is for (all but not-targeted), the share in `state`."""
        targeted = len(self.state) - self.counts["not-targeted"]
        return self.counts[state] / targeted if targeted else 0.0

    def time_to(self, state: str, percent: float) -> float | None:
        """Seconds until `percent` of the targeted devices were in `state` (None: never)."""
        for sample in self.samples:
            targeted = sum(sample.counts.values()) - sample.counts["not-targeted"]
            if targeted and sample.counts[state] * 100 >= percent * targeted:
                return sample.at
        return None

    def failures(self) -> dict[str, int]:
        return dict(
            Counter(
                self.reasons[d] or "no reason reported" for d, s in self.state.items() if s == "failed"
            ).most_common()
        )

    def summary(self) -> dict[str, Any]:
        """Everything, as JSON for tests and tools."""
        per_device_messages = [self.messages[d] for d in self.state]
        per_device_bytes = [self.bytes[d] for d in self.state]
        return {
            "deployment": self.deployment,
            "devices": len(self.state),
            "seconds": round(self.elapsed, 3),
            "final": {s: self.counts[s] for s in STATES},
            "time_to": {
                state: {f"{p}%": self.time_to(state, p) for p in (50, 90, 100)}
                for state in ("healthy", "failed")
            },
            "messages_per_device": _spread(per_device_messages),
            "bytes_per_device": _spread(per_device_bytes),
            "failures_by_reason": self.failures(),
            "events": [{"at": at, "what": what} for at, what in self.events],
            "timeline": [{"at": s.at, **s.counts} for s in self.samples],
        }

    def table(self) -> str:
        """For people: the timeline every few samples, then the figures."""
        summary = self.summary()
        shown = [s for s in STATES if any(sample.counts[s] for sample in self.samples)] or ["waiting"]
        lines = ["  t (s) " + "".join(f"{s:>13}" for s in shown)]
        step = max(1, len(self.samples) // 20)
        picked = self.samples[::step] + (
            [self.samples[-1]] if self.samples and len(self.samples) % step else []
        )
        for sample in picked:
            lines.append(f"{sample.at:7.1f} " + "".join(f"{sample.counts[s]:>13}" for s in shown))
        lines.append("")
        for state, marks in summary["time_to"].items():
            lines.append(
                f"time to {state}: "
                + ", ".join(f"{p} {'-' if t is None else f'{t:.1f} s'}" for p, t in marks.items())
            )
        m, b = summary["messages_per_device"], summary["bytes_per_device"]
        lines.append(f"messages per device: median {m['median']}, max {m['max']}; bytes median {b['median']}")
        for reason, count in summary["failures_by_reason"].items():
            lines.append(f"failed x{count}: {reason}")
        for event in summary["events"]:
            lines.append(f"at {event['at']:.1f} s: {event['what']}")
        return "\n".join(lines)

    def plot(self, path: Path | str, *, title: str | None = None) -> Path:
        """A stacked area chart of the timeline (PNG), scenario steps marked. Needs matplotlib
        (`pip install matplotlib`); nothing else in the simulator does."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
        path = Path(path)
        times = [s.at for s in self.samples]
        shown = [s for s in STATES if any(sample.counts[s] for sample in self.samples)]
        fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
        ax.stackplot(
            times,
            [[sample.counts[s] for sample in self.samples] for s in shown],
            labels=shown,
            colors=[_COLOURS[s] for s in shown],
        )
        top = len(self.state)
        span = times[-1] if times else 1.0
        lane, last = 0, None
        for at, what in self.events:
            # labels of events close together go down a lane each, so none covers another
            lane = lane + 1 if last is not None and at - last < span * 0.03 else 0
            last = at
            ax.axvline(at, color="#333333", linewidth=0.8, linestyle="--")
            ax.text(
                at, top * (0.98 - 0.33 * (lane % 3)), f" {what}", rotation=90, va="top", ha="left", fontsize=8
            )
        ax.set_xlim(0, times[-1] if times else 1)
        ax.set_ylim(0, top)
        ax.set_xlabel("seconds since the rollout began")
        ax.set_ylabel("devices")
        ax.set_title(title or f"{self.deployment}: {top} simulated devices")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"median": 0, "mean": 0, "max": 0}
    return {
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2),
        "max": max(values),
    }
