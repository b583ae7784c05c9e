"""`python3 -m modules.image.entrypoint`: how a module image starts its scoring host.

Everything comes from the environment, so `docker run -e MODELFLEET_PORT=N IMAGE` and the agent's
Docker runtime start it the same way: the settings baked at build time
(`MODELFLEET_SCORING_SETTINGS`), the port (`MODELFLEET_PORT`, 5001 by default, as Azure ML's
inference server), the address (`MODELFLEET_HOST`, default 0.0.0.0, the container's own; give
127.0.0.1 under host networking to stay on loopback), an optional module version for the v2
routes (`MODELFLEET_MODULE_VERSION`), and the keys (`MODELFLEET_SCORING_PRIMARY_KEY`,
`MODELFLEET_SCORING_SECONDARY_KEY`), which never sit in the image.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from pydantic import ValidationError

from modules.image._layout import DEFAULT_HOST, DEFAULT_PORT, HOST_ENV, PORT_ENV, SETTINGS_ENV, VERSION_ENV
from modules.scoring import ScoringSettings, run_server
from modules.scoring.cli import keys_from_environment


def settings_from_environment(environ: Mapping[str, str]) -> ScoringSettings:
    """The host's settings from the container's environment; ValueError names what is wrong."""
    raw = environ.get(SETTINGS_ENV)
    if not raw:
        raise ValueError(f"{SETTINGS_ENV} is not set: this image was not built by modelfleet")
    data = json.loads(raw)
    port = environ.get(PORT_ENV) or str(DEFAULT_PORT)
    if not port.isdigit():
        raise ValueError(f"{PORT_ENV}={port!r} is not a port number")
    data["port"] = int(port)
    data["host"] = environ.get(HOST_ENV) or DEFAULT_HOST
    if environ.get(VERSION_ENV):
        data["model_version"] = environ[VERSION_ENV]
    primary, secondary = keys_from_environment(environ)
    data["primary_key"], data["secondary_key"] = primary, secondary
    return ScoringSettings.model_validate(data)


def main() -> int:
    try:
        settings = settings_from_environment(os.environ)
    except (ValueError, ValidationError) as exc:
        print(f"modelfleet: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
