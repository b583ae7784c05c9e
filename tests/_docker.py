"""A real Docker engine for the tests: Debian's `docker.io`, started by the tests themselves.

One `dockerd` per test session, with its own data root, exec root, socket and empty config under a
folder the session owns, so it shares nothing with an engine the machine may already run and
leaves nothing behind. `--iptables=false --bridge=none`: containers use host networking only.
A missing `docker.io` or an engine that does not start fails the tests that need it, with the
reason; they never skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "run `make test` (it installs the test services) or `apt-get install docker.io`"


def _unavailable(reason: str) -> None:
    """A missing engine fails the test, never skips it (as a missing Mosquitto or registry does)."""
    pytest.fail(f"the Docker engine is needed: {reason}", pytrace=False)


@dataclass(frozen=True)
class DockerEngine:
    """`run(...)` is the `docker` CLI of the same package, pointed at this engine only."""

    host: str
    client: str
    config_dir: Path
    root: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.client, *args], capture_output=True, text=True, input=input, env=self.env(), timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def login(self, registry: str, user: str, password: str) -> None:
        self.run("login", "--username", user, "--password-stdin", registry, input=password)


def _binary(name: str) -> str | None:
    for candidate in (f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def run_docker_engine(root: Path, timeout: float = 60.0) -> Iterator[DockerEngine]:
    dockerd, client = _binary("dockerd"), _binary("docker")
    if dockerd is None or client is None:
        _unavailable(f"dockerd is not installed: {INSTALL_HINT}")
    assert dockerd is not None and client is not None
    root.mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text(json.dumps({}))
    (root / "client").mkdir(exist_ok=True)
    socket = root / "docker.sock"
    # Unix socket paths are limited to 108 bytes: the exec root (containerd's sockets) stays short.
    exec_root = Path(f"/tmp/mf-dockerd-{os.getpid()}-{hashlib.sha256(bytes(root)).hexdigest()[:6]}")
    log = root / "dockerd.log"
    cmd = [
        dockerd,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--config-file", str(root / "daemon.json"),
        "--data-root", str(root / "data"),
        "--exec-root", str(exec_root),
        "--pidfile", str(root / "dockerd.pid"),
        "--host", f"unix://{socket}",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    engine = DockerEngine(f"unix://{socket}", client, root / "client", root)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                _unavailable(f"dockerd exited with {proc.returncode}: {log.read_text()[-1500:]}")
            if socket.exists() and engine.run("version", check=False, timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                _unavailable(f"dockerd did not answer within {timeout}s: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            ids = engine.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.run("rm", "-f", *ids, check=False, timeout=60)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # dockerd leaves its default network namespace bind-mounted under the exec root.
        for mounted in sorted(exec_root.glob("netns/*")):
            subprocess.run(["umount", str(mounted)], capture_output=True, check=False)
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(root / "data", ignore_errors=True)  # pulled images: hundreds of MB per session


class _Shared:
    """One engine for every folder of tests that needs one in a session (`tests/images`,
    `tests/docker`): started by the first user, stopped after the last."""

    stack: contextlib.ExitStack | None = None
    engine: DockerEngine | None = None
    users = 0


@contextlib.contextmanager
def shared_docker_engine(root: Callable[[], Path]) -> Iterator[DockerEngine]:
    """`run_docker_engine` shared across session fixtures; `root` makes its folder on first use."""
    if _Shared.engine is None:
        stack = contextlib.ExitStack()
        _Shared.engine = stack.enter_context(run_docker_engine(root()))
        _Shared.stack = stack
    _Shared.users += 1
    try:
        yield _Shared.engine
    finally:
        _Shared.users -= 1
        if _Shared.users == 0 and _Shared.stack is not None:
            stack, _Shared.stack, _Shared.engine = _Shared.stack, None, None
            stack.close()
