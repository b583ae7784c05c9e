"""Services on this workstation: a published module served by the local scoring host.

Azure ML's `LocalWebservice` runs the scoring container on the developer's machine to try a
service before deploying it. Here the same module an agent would run is pulled from the
registry and served as `modelfleet serve --module NAME:VERSION` serves it, in a process of its
own that outlives the notebook (as Azure's container does). What is needed to find it again,
from another `Webservice(ws, name)` or another Python process, is a record under
`<workspace>/local-services/`: the process id, the port, the module version and the log file.

The process runs in the current Python environment: module requirements are not installed
(`serve --module` says so in its log), which is the point of a local try-out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modules import ModelfleetError
from publisher._workspace import Workspace

READY_PATH = "/v2/health/ready"
_SERVE = "import sys; from publisher.serve import main; sys.exit(main(sys.argv[1:]))"
# Popen objects of the hosts this process started, so that an ended one is reaped (no zombie)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class LocalRecord:
    name: str
    module: str  # NAME:VERSION
    digest: str
    port: int
    pid: int
    log: str
    started_at: str


def _folder(workspace: Workspace) -> Path:
    return workspace.root / "local-services"


def _record_path(workspace: Workspace, name: str) -> Path:
    return _folder(workspace) / f"{workspace.fleet}--{name}.json"


def load(workspace: Workspace, name: str) -> LocalRecord | None:
    try:
        return LocalRecord(**json.loads(_record_path(workspace, name).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ModelfleetError(
            f"{_record_path(workspace, name)} is not a local service record: {exc}"
        ) from None


def names(workspace: Workspace) -> list[str]:
    prefix = f"{workspace.fleet}--"
    folder = _folder(workspace)
    if not folder.is_dir():
        return []
    return sorted(p.stem[len(prefix) :] for p in folder.glob(f"{prefix}*.json"))


def _save(workspace: Workspace, record: LocalRecord) -> None:
    path = _record_path(workspace, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(temporary, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens there; SO_REUSEADDR as the host sets it, so that the connections
    of a host just stopped (TIME_WAIT) do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def alive(record: LocalRecord) -> bool:
    """Whether the record's host process still runs, and is that host (a pid can be reused)."""
    child = _CHILDREN.get(record.pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{record.pid}/stat").read_text()
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return record.module.encode() in cmdline and str(record.port).encode() in cmdline


def ready(record: LocalRecord, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{record.port}{READY_PATH}", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(workspace: Workspace, name: str, module: str, digest: str, port: int) -> LocalRecord:
    """Start the scoring host for `module` (NAME:VERSION, already in the registry) on `port`."""
    if port_in_use(port):
        raise ModelfleetError(f"port {port} is in use on this machine: choose another one")
    folder = _folder(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{workspace.fleet}--{name}.log"
    argv = [
        "serve",
        "--module",
        module,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--registry",
        workspace.registry_url,
        "--cache-dir",
        str(folder / "cache"),
    ]
    if workspace.config_path is not None:
        argv += ["--config", str(workspace.config_path)]
    env = dict(os.environ)
    credentials = workspace.credentials
    for variable, value in (
        ("MODELFLEET_REGISTRY_USERNAME", credentials.username),
        ("MODELFLEET_REGISTRY_PASSWORD", credentials.password),
        ("MODELFLEET_REGISTRY_TOKEN", credentials.token),
    ):
        if value:
            env[variable] = value
    with open(log_path, "ab") as log:
        log.write(f"--- {datetime.now(UTC).isoformat()} starting {module} on port {port}\n".encode())
        log.flush()
        child = subprocess.Popen(
            [sys.executable, "-c", _SERVE, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workspace.root,
            start_new_session=True,  # Ctrl-C in the notebook does not stop the service
        )
    _CHILDREN[child.pid] = child
    record = LocalRecord(
        name=name,
        module=module,
        digest=digest,
        port=port,
        pid=child.pid,
        log=str(log_path),
        started_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
    )
    _save(workspace, record)
    return record


def wait_ready(record: LocalRecord, timeout: float, show_output: bool = False) -> None:
    """Until the host answers its readiness route; raise with the log's tail if it ends first."""
    deadline = time.monotonic() + timeout
    dots = 0
    while time.monotonic() < deadline:
        if ready(record):
            if show_output:
                print(f"\nLocal webservice is running at http://127.0.0.1:{record.port}")
            return
        if not alive(record):
            raise ModelfleetError(
                f"the local service {record.name} ({record.module}) ended while starting:\n"
                + log_tail(record, 20)
            )
        if show_output:
            print("." if dots else "Checking the local scoring host's health.", end="", flush=True)
            dots += 1
        time.sleep(0.5)
    raise ModelfleetError(
        f"the local service {record.name} ({record.module}) was not ready within {timeout:g} s:\n"
        + log_tail(record, 20)
    )


def log_tail(record: LocalRecord, lines: int) -> str:
    try:
        text = Path(record.log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop(record: LocalRecord, timeout: float = 10.0) -> None:
    """End the host process of `record` (only if it is still that host) and wait for it."""
    if alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(record) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    child = _CHILDREN.pop(record.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout)


def remove(workspace: Workspace, record: LocalRecord) -> None:
    stop(record)
    _record_path(workspace, record.name).unlink(missing_ok=True)


def describe(record: LocalRecord) -> dict[str, Any]:
    return {**asdict(record), "alive": alive(record)}
