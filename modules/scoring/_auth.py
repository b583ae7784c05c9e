"""Key auth in Azure ML's shape: a primary and a secondary key, either one opens the door.

Two keys allow rotation without downtime. Keys come from the environment or a file the operator
controls, never from the module artifact, so publishing a module never publishes its keys.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from pathlib import Path

from .._errors import ConfigError

PRIMARY_ENV = "MODELFLEET_SCORING_PRIMARY_KEY"
SECONDARY_ENV = "MODELFLEET_SCORING_SECONDARY_KEY"


class KeyAuth:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = token.strip().encode()
        # Compare against every key so timing reveals neither the key nor which slot matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(offered, key)
        return matched


def keys_from_environment(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    return environ.get(PRIMARY_ENV) or None, environ.get(SECONDARY_ENV) or None


def keys_from_file(path: Path) -> tuple[str | None, str | None]:
    """A JSON object (`primary_key`/`secondary_key`, or Azure's `primaryKey`/`secondaryKey`)
    or a text file with the primary key on the first line and the secondary on the second."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc.strerror}") from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"keys file {path} is not valid JSON: {exc}") from None
        primary = data.get("primary_key") or data.get("primaryKey")
        secondary = data.get("secondary_key") or data.get("secondaryKey")
    else:
        lines = [line.strip() for line in stripped.splitlines() if line.strip()]
        primary = lines[0] if lines else None
        secondary = lines[1] if len(lines) > 1 else None
    if not primary and not secondary:
        raise ConfigError(f"keys file {path} holds no key")
    return primary, secondary
