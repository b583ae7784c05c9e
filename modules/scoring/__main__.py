"""`python -m modules.scoring --settings-file settings.json [--keys-fd N]`: how the edge agent
starts a host.

The agent writes a ScoringSettings JSON, so no CLI flags have to be kept in sync between the two.
Scoring keys never sit in that file: the agent hands them over once, through an inherited pipe
(`--keys-fd`), so they exist only in the two processes' memory (they may also come from the
environment when a person starts a host by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from ._auth import keys_from_environment
from ._server import run_server
from ._settings import ScoringSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modules.scoring")
    parser.add_argument("--settings-file", type=Path, required=True)
    parser.add_argument("--keys-fd", type=int, help="read the scoring keys (JSON) from this inherited fd")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.settings_file.read_text())
        if args.keys_fd is not None:
            with os.fdopen(args.keys_fd, "rb") as pipe:
                keys = json.loads(pipe.read())
            data.update({name: keys.get(name) for name in ("primary_key", "secondary_key")})
            if not (data.get("primary_key") or data.get("secondary_key")):
                raise ValueError("the keys pipe held no key: refusing to serve without auth")
        settings = ScoringSettings.model_validate(data)
    except OSError as exc:
        print(f"modelfleet: error: cannot read {args.settings_file}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ValueError, ValidationError) as exc:
        print(
            f"modelfleet: error: invalid settings in {args.settings_file}: {str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        return 2
    if not settings.auth_enabled:
        primary, secondary = keys_from_environment(os.environ)
        settings = settings.model_copy(update={"primary_key": primary, "secondary_key": secondary})
        settings = ScoringSettings.model_validate(settings.model_dump())
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
