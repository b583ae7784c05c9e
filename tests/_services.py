"""Real Mosquitto and Distribution processes for the tests, on free loopback ports.

A missing service is a test failure, never a skip: `make test` installs them, and a suite that
silently skipped its integration tests would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "run `make test` (it installs the test services) or `apt-get install {pkg}`"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed: {INSTALL_HINT.format(pkg=package)}", pytrace=False)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}: {log.read_text()[-2000:]}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"service did not listen on 127.0.0.1:{port} within {timeout}s", pytrace=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    root: Path
    username: str | None = None
    password: str | None = None


@contextlib.contextmanager
def run_distribution(
    root: Path, *, htpasswd_user: tuple[str, str] | None = None, port: int | None = None
) -> Iterator[Service]:
    """Debian's docker-registry (Distribution 2.8) with deletes enabled, optionally behind basic auth.
    With `port` (and the same `root`), the same registry starts again after a stop."""
    binary = _binary("docker-registry", "docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    auth = ""
    if htpasswd_user is not None:
        import bcrypt

        user, password = htpasswd_user
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{user}:{hashed}\n")
        auth = f"auth:\n  htpasswd:\n    realm: modelfleet-test\n    path: {root / 'htpasswd'}\n"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        user, password = htpasswd_user or (None, None)
        yield Service(f"http://127.0.0.1:{port}", port, root, user, password)
    finally:
        _stop(proc)


@contextlib.contextmanager
def run_mosquitto(root: Path) -> Iterator[Service]:
    binary = _binary("mosquitto", "mosquitto")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    )
    log = root / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        yield Service(f"mqtt://127.0.0.1:{port}", port, root)
    finally:
        _stop(proc)


@contextlib.contextmanager
def run_mosquitto_at(
    root: Path,
    port: int,
    *,
    users: dict[str, str] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[Service]:
    """Mosquitto on a port the caller picked, so a test can stop it and start a fresh one (no
    persistence) where its clients expect it. `users` turns on a password file (made with
    `mosquitto_passwd`) and refuses anonymous clients; `tls` is (ca, cert, key) for an mqtts listener.
    """
    binary = _binary("mosquitto", "mosquitto")
    root.mkdir(parents=True, exist_ok=True)
    # Run as whoever runs the tests: as root, Mosquitto would otherwise switch to user `mosquitto`,
    # which cannot read a password file or key under pytest's private temp directories.
    lines = [
        f"listener {port} 127.0.0.1",
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "persistence false",
        "max_queued_messages 100000",
    ]
    if users:
        passwd_tool = _binary("mosquitto_passwd", "mosquitto")
        password_file = root / "passwd"
        password_file.unlink(missing_ok=True)
        for i, (user, password) in enumerate(users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run([passwd_tool, "-b", *create, str(password_file), user, password], check=True)
        password_file.chmod(0o644)
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    if tls is not None:
        ca, cert, key = tls
        lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    lines += ["log_dest stderr", "log_type error", "log_type warning"]
    config = root / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    log = root / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        scheme = "mqtts" if tls is not None else "mqtt"
        yield Service(f"{scheme}://127.0.0.1:{port}", port, root)
    finally:
        _stop(proc)


@contextlib.contextmanager
def run_mosquitto_config(config: Path, port: int) -> Iterator[Service]:
    """Mosquitto with a config file written elsewhere (e.g. by `modelfleet broker config`), listening
    on `port` on 127.0.0.1; the log goes beside the config. The URL is mqtts:// when the config has a
    certificate, since a generated config is TLS-only."""
    binary = _binary("mosquitto", "mosquitto")
    log = config.parent / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        scheme = "mqtts" if "certfile" in config.read_text() else "mqtt"
        yield Service(f"{scheme}://127.0.0.1:{port}", port, config.parent)
    finally:
        _stop(proc)
