"""Tag templates: one description that gives each device of a fleet its own tags.

A real fleet is not uniform (some devices have a GPU, sites differ), and targeting and staged
rollouts only show their behaviour on a fleet that is not. The share of devices that get a value
is exact and spread evenly over the device indexes, so a fleet of 50 with 30% `gpu=true` has 15
such devices, and any contiguous slice of the fleet has about 30% of them too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modules import ConfigError
from modules.tags import device_tag_value, parse_tag


@dataclass(frozen=True)
class Spread:
    """Values dealt round-robin: device i gets `values[i % len(values)]`."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Share:
    """`value` on `percent` of the devices (spread evenly); `otherwise` (None: no tag) on the rest."""

    value: Any
    percent: float
    otherwise: Any = None


def spread(*values: Any) -> Spread:
    if not values:
        raise ConfigError("spread() needs at least one value")
    return Spread(tuple(values))


def share(value: Any, percent: float, otherwise: Any = None) -> Share:
    if not 0 <= percent <= 100:
        raise ConfigError(f"a share is a percentage between 0 and 100, got {percent}")
    return Share(value, percent, otherwise)


def in_share(index: int, percent: float) -> bool:
    """Whether device `index` is in the first `percent` (spread evenly over the indexes)."""
    p = percent / 100
    return int((index + 1) * p) > int(index * p)


TagTemplate = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


def tags_for(template: TagTemplate | None, index: int) -> dict[str, Any]:
    if template is None:
        return {}
    if callable(template):
        return dict(template(index))
    tags: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, Spread):
            tags[key] = value.values[index % len(value.values)]
        elif isinstance(value, Share):
            chosen = value.value if in_share(index, value.percent) else value.otherwise
            if chosen is not None:
                tags[key] = chosen
        else:
            tags[key] = value
    return tags


def parse_spread(text: str) -> tuple[str, Spread]:
    """`site=a,b,c` (CLI) -> `("site", spread("a", "b", "c"))`, values typed as device tags."""
    key, values = parse_tag(text, option="--spread")
    return key, spread(*(device_tag_value(v) for v in values.split(",")))


def parse_share(text: str) -> tuple[str, Share]:
    """`gpu=true:30` (CLI) -> `("gpu", share(True, 30))`."""
    key, rest = parse_tag(text, option="--share")
    value, sep, percent = rest.rpartition(":")
    try:
        number = float(percent)
    except ValueError:
        number = -1.0
    if not sep or not 0 <= number <= 100:
        raise ConfigError(f"--share expects KEY=VALUE:PERCENT, e.g. gpu=true:30, got {text!r}")
    return key, share(device_tag_value(value), number)
