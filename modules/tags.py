"""`KEY=VALUE` tags as typed on a command line, read the same way by the publisher and the agent.

Two kinds of tag share the syntax. Model tags (and other `KEY=VALUE` options such as `--env`)
are annotations: their values stay strings. Device tags are what target conditions compare, and
a condition such as `tags.gpu = true` or `tags.ram > 4` needs a boolean or a number there, so
`parse_device_tags` types the value the way the condition language writes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from modules._errors import ConfigError

DeviceTagValue = str | int | float | bool


def parse_tag(text: str, *, option: str = "--tag") -> tuple[str, str]:
    """`"site=plant-1"` -> `("site", "plant-1")`: split at the first `=`, the value kept as typed.

    The value may be empty or contain further `=`; the key may not be empty. `option` only names
    the flag in the error, so the same rule serves `--env`, `--property` and friends.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{option} expects KEY=VALUE, got {text!r}")
    return key, value


def parse_tags(items: Iterable[str] | None, *, option: str = "--tag") -> dict[str, str]:
    """Repeated `KEY=VALUE` options -> a dict of strings; a key given twice keeps the last value."""
    return dict(parse_tag(item, option=option) for item in items or ())


def device_tag_value(text: str) -> DeviceTagValue:
    """`true`/`false` (any case) -> bool, then an int, then a float, else the string as given.

    Exactly Python's `int()` and `float()` rules, so `" 4 "`, `1_000` and `1e3` are numbers.
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_device_tags(items: Iterable[str] | None, *, option: str = "--tag") -> dict[str, DeviceTagValue]:
    """Repeated `--tag KEY=VALUE` for a device -> typed tags (see `device_tag_value`)."""
    return {key: device_tag_value(value) for key, value in (parse_tag(i, option=option) for i in items or ())}
