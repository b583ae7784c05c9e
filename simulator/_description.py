"""A fleet described in a file: how many devices, their ids, tags and hardware.

Why a file: a rehearsal should run against a fleet shaped like the real one (30% with a GPU, sites
spread over a list, slow links at one site), and that shape is worth keeping next to the rollout
it rehearses rather than retyping as flags. YAML or JSON, validated with pydantic:

    count: 1000
    ids: "cam-{i:04d}"
    tags:
      ring: prod
      gpu: {share: 30, value: true, otherwise: false}
    sites: [a, b, c]                 # the same as tags: {site: {spread: [a, b, c]}}
    profiles:
      - {name: jetson, share: 30, providers: [CUDAExecutionProvider, CPUExecutionProvider],
         bandwidth_mbps: 50, disk_free_mb: 4000}
      - {name: pi, share: 70, bandwidth_mbps: 8, disk_free_mb: 500, module_mb: 40,
         requests_per_s: 5, crash_after_requests: {iris-svc: 100}, clock_offset_s: -600}

Profiles are dealt by their shares, exactly and spread evenly over the indexes (as tag shares are),
so any slice of the fleet (a rollout step) has about the same mix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modules import ConfigError
from simulator._tags import share, spread


class HardwareProfile(BaseModel):
    """What a kind of device has: what its simulated runtime offers and how fast it downloads."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    share: float = Field(100.0, ge=0, le=100, description="percent of the fleet")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    bandwidth_mbps: float = Field(0.0, ge=0, description="megabits per second; 0: downloads take no time")
    disk_free_mb: float | None = Field(None, ge=0, description="None: the disk never fills")
    module_mb: float = Field(20.0, gt=0, description="what one module version weighs")
    start_delay_s: float = Field(0.0, ge=0, description="start-up after the download")
    ready_timeout_s: float = Field(2.0, gt=0, description="how long a start waits for readiness")
    requests_per_s: float = Field(0.0, ge=0, description="traffic each running module serves")
    never_ready: list[str] = Field(default_factory=list, description="modules that never become ready")
    crash_after_requests: dict[str, int] = Field(
        default_factory=dict, description="module -> the request each of its instances crashes on"
    )
    clock_offset_s: float = Field(0.0, description="how far the device's clock is off (+ ahead)")
    real: bool = Field(False, description="run the real runtime: registry pulls, processes, inference")

    def runtime_settings(self) -> dict[str, Any]:
        """Keyword arguments of `SimulatedRuntime`."""
        return {
            "providers": tuple(self.providers),
            "bandwidth_bps": self.bandwidth_mbps * 1e6 / 8,
            "disk_free_bytes": None if self.disk_free_mb is None else int(self.disk_free_mb * 2**20),
            "module_bytes": int(self.module_mb * 2**20),
            "start_delay_s": self.start_delay_s,
            "ready_timeout_s": self.ready_timeout_s,
            "requests_per_s": self.requests_per_s,
            "never_ready": tuple(self.never_ready),
            "crash_after": dict(self.crash_after_requests),
        }


class FleetDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=0)
    ids: str = "sim-{i:04d}"
    fleet: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    sites: list[str] | None = None
    profiles: list[HardwareProfile] = Field(default_factory=lambda: [HardwareProfile()])

    @model_validator(mode="after")
    def _check(self) -> FleetDescription:
        total = sum(p.share for p in self.profiles)
        if self.profiles and abs(total - 100) > 1e-6:
            raise ValueError(f"profile shares add up to {total:g}%, not 100%")
        try:
            self.ids.format(i=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ids must be a pattern with {{i}}, e.g. sim-{{i:04d}} ({exc})") from None
        self.tag_template()
        return self

    def tag_template(self) -> dict[str, Any]:
        """The tags as `tags_for` takes them: spreads and shares from their file form."""
        template = {key: _tag_value(key, value) for key, value in self.tags.items()}
        if self.sites:
            template["site"] = spread(*self.sites)
        return template

    def profile_for(self) -> Callable[[int], HardwareProfile]:
        return ProfileDealer(self.profiles)


def _tag_value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"spread"} and isinstance(value["spread"], list) and value["spread"]:
            return spread(*value["spread"])
        if "share" in value and set(value) <= {"share", "value", "otherwise"}:
            return share(value.get("value", True), float(value["share"]), value.get("otherwise"))
        raise ValueError(
            f"tag {key!r}: a value, {{spread: [a, b]}} or {{share: PCT, value: V, otherwise: W}}, "
            f"got {value!r}"
        )
    return value


class ProfileDealer:
    """Device index -> profile, each profile on exactly its share of any prefix of the fleet
    (rounded), spread evenly: the profile furthest below its share so far gets the next device."""

    def __init__(self, profiles: Sequence[HardwareProfile]) -> None:
        self.profiles = list(profiles) or [HardwareProfile()]
        self._dealt: list[int] = []
        self._counts = [0] * len(self.profiles)

    def __call__(self, index: int) -> HardwareProfile:
        while len(self._dealt) <= index:
            n = len(self._dealt) + 1
            behind = [p.share * n / 100 - c for p, c in zip(self.profiles, self._counts, strict=True)]
            chosen = max(range(len(behind)), key=lambda k: (behind[k], -k))
            self._counts[chosen] += 1
            self._dealt.append(chosen)
        return self.profiles[self._dealt[index]]


def load_fleet_file(path: Path | str) -> FleetDescription:
    """A fleet description from YAML (`.yaml`, `.yml`) or JSON; ConfigError says what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the fleet file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise ConfigError(f"fleet file {path} is not valid {kind}: {exc}") from None
    try:
        return FleetDescription.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ConfigError(f"fleet file {path}: {where}: {first['msg']}") from None
