"""Scenarios: faults at given times or on events, from a file, the CLI or Python.

A rehearsal is only worth something if it contains what goes wrong in the field, at the moment it
tends to go wrong: a site dropping off in the middle of a rollout, a batch of devices whose disk is
full, a release that crashes on the GPU devices. A scenario is a list of steps; each picks devices
(by tag, id, or a share of them), does one thing to them, at a time or when the rollout reaches a
point, and may undo it after a while:

    steps:
      - {at: 0, do: fail-start, module: iris-svc, where: {gpu: true}}
      - {when: {healthy: 50}, do: offline, where: {site: b}, for: 20}
      - {at: 5, do: corrupt-download, share: 10}
      - {at: 8, do: fill-disk, devices: [sim-0003]}
      - {at: 0, do: never-ready, module: iris-svc, share: 5}
      - {at: 0, do: crash-after, module: iris-svc, requests: 100, where: {site: c}}

`when` waits for a share (percent of the targeted devices) of the recorded deployment to be in a
state (`healthy`, `failed`, `applying`, `downloading`...), as the fleet's timeline sees it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modules import ConfigError
from simulator._tags import in_share
from simulator._timeline import STATES, Timeline

Action = Literal[
    "offline",
    "online",
    "fail-start",
    "fail-next-start",
    "crash",
    "crash-after",
    "never-ready",
    "serve",
    "unhealthy",
    "heal",
    "slow-download",
    "cut-download",
    "corrupt-download",
    "fill-disk",
    "free-disk",
    "restart-agent",
    "broker-down",
    "broker-up",
    "restart-broker",
    "skew-clock",
]
_NEEDS_MODULE = {"fail-start", "fail-next-start", "crash", "crash-after", "never-ready", "serve", "unhealthy"}
_ANY_DEVICE = {"offline", "online", "skew-clock"}  # what a real device undergoes too
_RESET = {"slow-download": {"factor": 1.0}, "skew-clock": {"seconds": 0.0}}  # undone by a neutral value
_UNDO: dict[str, str] = {"offline": "online", "fill-disk": "free-disk", "broker-down": "broker-up"}


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    at: float | None = Field(None, ge=0, description="seconds after the scenario starts")
    when: dict[str, float] | None = Field(None, description="{state: percent}, e.g. {healthy: 50}")
    do: Action
    where: dict[str, Any] | None = Field(None, description="devices whose tags have these values")
    devices: list[str] | None = None
    share: float | None = Field(None, gt=0, le=100, description="percent of the chosen devices")
    module: str | None = None
    factor: float = Field(0.1, gt=0, description="slow-download: the bandwidth multiplier")
    fraction: float = Field(0.5, ge=0, lt=1, description="cut-download: after this share of the bytes")
    every: bool = Field(False, description="download faults: every download, not only the next")
    seconds: float = Field(0.0, description="skew-clock: how far the clock is off (+ ahead, 0: right)")
    requests: int = Field(1, ge=1, description="crash-after: the request it crashes on; serve: how many")
    reason: str = "init() raised RuntimeError (simulated)"
    duration: float | None = Field(None, gt=0, alias="for", description="undo after this many seconds")

    @model_validator(mode="after")
    def _check(self) -> Step:
        if self.at is None and self.when is None:
            self.at = 0.0
        if self.when is not None:
            unknown = set(self.when) - set(STATES)
            if unknown or len(self.when) != 1:
                raise ValueError(f"when: one of {', '.join(STATES)} with a percentage, got {self.when}")
        if self.do in _NEEDS_MODULE and not self.module:
            raise ValueError(f"{self.do} needs a module")
        if self.duration is not None and self.do not in _UNDO and self.do not in _RESET:
            raise ValueError(
                f"{self.do} cannot be undone after a while ('for' is for {', '.join([*_UNDO, *_RESET])})"
            )
        return self

    def describe(self) -> str:
        who = []
        if self.where:
            who.append(",".join(f"{k}={v}" for k, v in self.where.items()))
        if self.devices:
            who.append(",".join(self.devices[:3]) + ("..." if len(self.devices) > 3 else ""))
        if self.share:
            who.append(f"{self.share:g}%")
        what = self.do + (f" {self.module}" if self.module else "")
        return what + (f" [{' '.join(who)}]" if who else "")


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "scenario"
    steps: list[Step] = Field(default_factory=list)


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the scenario {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"scenario {path} does not parse: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"scenario {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def parse_fault(text: str) -> Step:
    """`do=offline,site=b,at=10,for=30` (CLI `--fault`): the step's fields as key=value; keys
    that are not fields are tags to match."""
    fields: dict[str, Any] = {}
    where: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--fault expects key=value pairs, e.g. do=offline,site=b,at=10; got {part!r}")
        parsed = yaml.safe_load(value) if value else ""
        if key in Step.model_fields or key == "for":
            if key == "devices":
                parsed = value.split("+")
            elif key == "when":
                state, _, percent = value.partition(":")
                parsed = {state: float(percent or 100)}
            fields[key] = parsed
        else:
            where[key] = parsed
    if where:
        fields["where"] = where
    try:
        return Step.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--fault {text!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def chosen(fleet: Any, step: Step) -> list[Any]:
    """The devices a step acts on: matching tags and ids, then its share of them (spread evenly)."""
    devices = list(fleet.devices)
    if step.devices is not None:
        wanted = set(step.devices)
        devices = [d for d in devices if d.device_id in wanted]
    if step.where:
        devices = [d for d in devices if all(d.config.tags.get(k) == v for k, v in step.where.items())]
    if step.share is not None:
        devices = [d for i, d in enumerate(devices) if in_share(i, step.share)]
    return devices


async def apply(fleet: Any, step: Step) -> int:
    """Do the step to its devices now; returns how many it touched."""
    if step.do == "broker-down":
        fleet.broker_down()
        return len(fleet.devices)
    if step.do == "broker-up":
        fleet.broker_up()
        return len(fleet.devices)
    if step.do == "restart-broker":
        await fleet.restart_broker()
        return len(fleet.devices)
    devices = chosen(fleet, step)
    module = step.module or ""
    actions: dict[str, Callable[[Any], Any]] = {
        "offline": lambda d: d.go_offline(),
        "online": lambda d: d.go_online(),
        "fail-start": lambda d: d.fail_every_start(module, step.reason),
        "fail-next-start": lambda d: d.fail_next_start(module, step.reason),
        "crash": lambda d: d.crash(module),
        "crash-after": lambda d: d.crash_after(module, step.requests),
        "never-ready": lambda d: d.never_ready(module),
        "serve": lambda d: d.serve(module, step.requests),
        "unhealthy": lambda d: d.make_unhealthy(module),
        "heal": lambda d: d.heal(step.module),
        "slow-download": lambda d: d.slow_downloads(step.factor),
        "cut-download": lambda d: d.cut_downloads(step.fraction, every=step.every),
        "corrupt-download": lambda d: d.corrupt_downloads(every=step.every),
        "fill-disk": lambda d: d.fill_disk(),
        "skew-clock": lambda d: d.skew_clock(step.seconds),
        "free-disk": lambda d: d.free_disk(
            d.profile.runtime_settings()["disk_free_bytes"] if d.profile else None
        ),
    }
    if step.do == "restart-agent":
        await asyncio.gather(*(d.restart_agent() for d in devices))
        return len(devices)
    if step.do not in _ANY_DEVICE:  # faults of the simulated runtime: real devices are left alone
        devices = [d for d in devices if not getattr(d, "real", False)]
    act = actions[step.do]
    for device in devices:
        try:
            act(device)
        except Exception as exc:  # a module that does not run there: that device is skipped
            if step.do in ("crash", "unhealthy", "serve"):
                continue
            raise ConfigError(f"{step.describe()} on {device.device_id}: {exc}") from None
    return len(devices)


def _disk_of(device: Any) -> int | None:
    """The free disk its profile started with (None: a disk that never fills)."""
    return device.profile.runtime_settings()["disk_free_bytes"] if device.profile else None


async def _undo_later(fleet: Any, step: Step, timeline: Timeline | None) -> None:
    assert step.duration is not None
    await asyncio.sleep(step.duration)
    if step.do in _RESET:
        undo = step.model_copy(update={**_RESET[step.do], "duration": None})
    else:
        undo = step.model_copy(update={"do": _UNDO[step.do], "duration": None})
    touched = await apply(fleet, undo)
    if timeline is not None:
        timeline.mark(f"{undo.describe()} ({touched})")


async def run_scenario(
    fleet: Any, scenario: Scenario, timeline: Timeline | None = None
) -> list[dict[str, Any]]:
    """Run every step (at its time, or when its condition holds on `timeline`); returns what was
    done when. Steps with `when` need the timeline of the deployment they watch."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    done: list[dict[str, Any]] = []
    undos: list[asyncio.Task[None]] = []

    async def one(step: Step) -> None:
        if step.when is not None:
            if timeline is None:
                raise ConfigError(f"step {step.describe()} waits for {step.when}: it needs a timeline")
            ((state, percent),) = step.when.items()
            while timeline.share(state) * 100 < percent:
                timeline.changed.clear()
                await timeline.changed.wait()
        if step.at is not None:
            await asyncio.sleep(max(0.0, began + step.at - loop.time()))
        touched = await apply(fleet, step)
        at = round(loop.time() - began, 3)
        done.append({"at": at, "step": step.describe(), "devices": touched})
        if timeline is not None:
            timeline.mark(f"{step.describe()} ({touched})")
        if step.duration is not None:
            undos.append(loop.create_task(_undo_later(fleet, step, timeline)))

    try:
        await asyncio.gather(*(one(step) for step in scenario.steps))
        await asyncio.gather(*undos)
    finally:
        for task in undos:
            task.cancel()
    return sorted(done, key=lambda d: d["at"])
