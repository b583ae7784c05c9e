"""What an earlier agent may have left on this device, found without the module runtime's code.

An agent that has not run a module yet does not load the executor, the artifact store or the
process runtime; at start it must still find what a crashed or reinstalled agent left behind
(a scoring host serving with no record, a container, stored blobs), and only then load them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def twin_dir(data_dir: Path, module: str) -> Path | None:
    """The folder of a module's twin (`modules.scoring.twin`): `<data_dir>/runtime/twins/<module>`;
    None for a module name that is no safe folder name (that module gets no twin)."""
    if not _FOLDER_NAME.match(module) or module.strip(".") == "":
        return None
    return data_dir / "runtime" / "twins" / module


def containers_dir(data_dir: Path) -> Path:
    """Where the Docker runtime keeps its logs and the images it pulled; absent until this agent
    first runs a container, which is how the executor knows, without the Docker modules, that
    there is no container of its own to look for."""
    return data_dir / "runtime" / "containers"


def proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def find_strays(runtime_dir: Path, keep: set[int]) -> list[int]:
    """Scoring hosts of a process runtime's instances (their settings file is under
    `runtime_dir`) that `keep` does not account for: what a crash between starting an instance
    and recording it, or a lost state file, would leave serving for ever."""
    prefix = str(runtime_dir / "instances") + os.sep
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        pid = int(entry.name)
        args = proc_cmdline(pid)
        ours = "modules.scoring" in args and any(
            a.startswith(prefix) and a.endswith("/settings.json") for a in args
        )
        if ours and proc_state(pid) not in (None, "Z", "X"):
            found.append(pid)
    return found


def holds_files(folder: Path) -> bool:
    """True if anything but empty folders lies under `folder`."""
    return any(files for _root, _dirs, files in os.walk(folder))
