"""One virtual environment per distinct set of extra requirements, built once and shared.

The venv sees the system site-packages, so modelfleet itself and onnxruntime (often a large,
device-specific build) are not installed again; only what the module adds is. It is built under a
temporary name and renamed when pip succeeded, so a half-built environment is never used, even
after the agent was killed in the middle of a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import uuid
from pathlib import Path

from modules._tasks import cancel_and_wait

from ._errors import ModuleStartError

_PIP_TAIL_LINES = 20


def requirements_key(requirements: list[str]) -> str:
    """Order-independent name of a requirement set: the same set always maps to the same venv."""
    canonical = "\n".join(sorted(line.strip() for line in requirements if line.strip()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


class EnvBuilder:
    """Builds venvs under `envs_dir`; concurrent requests for one key share one build."""

    def __init__(self, envs_dir: Path, *, python: str) -> None:
        self.envs_dir = envs_dir
        self.python = python
        self._builds: dict[str, asyncio.Task[str]] = {}

    async def ensure(self, requirements: list[str]) -> str:
        lines = [line.strip() for line in requirements if line.strip()]
        if not lines:
            return sys.executable
        key = requirements_key(lines)
        final = self.envs_dir / key
        if venv_python(final).exists():
            return str(venv_python(final))
        task = self._builds.get(key)
        if task is None:
            task = asyncio.create_task(self._build(key, lines), name=f"venv-{key}")
            self._builds[key] = task
            task.add_done_callback(lambda _t, k=key: self._builds.pop(k, None))
        # Shielded: one caller giving up must not cancel the build the others wait for.
        return await asyncio.shield(task)

    async def _build(self, key: str, requirements: list[str]) -> str:
        final = self.envs_dir / key
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.envs_dir / f".building-{key}-{uuid.uuid4().hex[:8]}"
        try:
            # --without-pip: the system pip is visible through --system-site-packages, and
            # ensurepip is slow (and missing on some distributions' Pythons).
            await _run(
                [self.python, "-m", "venv", "--system-site-packages", "--without-pip", str(temporary)],
                what="creating the virtual environment",
            )
            requirements_file = temporary / "modelfleet-requirements.txt"
            requirements_file.write_text("\n".join(requirements) + "\n")
            await _run(
                [
                    str(venv_python(temporary)),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "-r",
                    str(requirements_file),
                ],
                what="pip install",
            )
            try:
                os.rename(temporary, final)
            except OSError:
                # Another agent process finished the same environment first: use that one.
                if not venv_python(final).exists():
                    raise
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        return str(venv_python(final))

    async def close(self) -> None:
        await cancel_and_wait(*self._builds.values())


async def _run(command: list[str], *, what: str) -> None:
    """Run a build step; on failure raise with its last output lines, the useful part of pip's."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        output, _ = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        lines = output.decode("utf-8", errors="replace").rstrip().splitlines()[-_PIP_TAIL_LINES:]
        raise ModuleStartError(f"{what} failed (exit {process.returncode}):\n" + "\n".join(lines))
