"""One virtual environment per distinct set of extra requirements, built once and shared.

The venv is layered on the agent's own environment, whatever that is (the system Python, a venv,
a pipx install): a `.pth` file in the venv adds the agent interpreter's site directories after the
venv's own. So modelfleet itself, onnxruntime (often a large, device-specific build) and numpy are
never installed twice and are always visible, while what the module adds wins over them. A plain
`--system-site-packages` venv would not do: when the agent runs from a venv, the venv's base is the
system Python, and what was installed beside the agent would be invisible to the module.

It is built under a temporary name and renamed when pip succeeded, so a half-built environment is
never used, even after the agent was killed in the middle of a build. The agent environment's
site directories are part of the venv's name: an agent moved to another environment builds anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from modules.tasks import cancel_and_wait

from ._errors import ModuleStartError

_PIP_TAIL_LINES = 20


_LAYER_FILE = "modelfleet-agent-environment.pth"
# Run by the interpreter the venv is built from: the site directories that make up its environment.
_SITE_DIRS_PROBE = (
    "import json, site; dirs = site.getsitepackages(); "
    "user = site.getusersitepackages() if site.ENABLE_USER_SITE else None; "
    "print(json.dumps(dirs + ([user] if user else [])))"
)


def requirements_key(requirements: list[str], base: list[str] | None = None) -> str:
    """Order-independent name of a requirement set (and of the environment it is layered on):
    the same set always maps to the same venv."""
    canonical = "\n".join(sorted(line.strip() for line in requirements if line.strip()))
    if base:
        canonical += "\n#layered-on\n" + "\n".join(base)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def layer_lines(site_dirs: list[str]) -> str:
    """The `.pth` content: `site.addsitedir` (not a bare path) so that the `.pth` files inside the
    agent's site directories (editable installs, namespace packages) are processed too."""
    return "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs)


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


class EnvBuilder:
    """Builds venvs under `envs_dir`; concurrent requests for one key share one build."""

    def __init__(self, envs_dir: Path, *, python: str) -> None:
        self.envs_dir = envs_dir
        self.python = python
        self._builds: dict[str, asyncio.Task[str]] = {}
        self._site_dirs: list[str] | None = None

    async def agent_site_dirs(self) -> list[str]:
        """The site directories of the interpreter modules are layered on, existing ones only."""
        if self._site_dirs is None:
            output = await _run([self.python, "-c", _SITE_DIRS_PROBE], what="reading the agent's environment")
            dirs = [d for d in json.loads(output.splitlines()[-1]) if os.path.isdir(d)]
            # modelfleet itself, when the agent runs it from a source tree rather than an install
            here = str(Path(__file__).resolve().parents[2])
            if self.python == sys.executable and not any(here.startswith(d) for d in dirs):
                dirs.append(here)
            self._site_dirs = dirs
        return self._site_dirs

    async def ensure(self, requirements: list[str]) -> str:
        lines = [line.strip() for line in requirements if line.strip()]
        if not lines:
            return self.python
        key = requirements_key(lines, await self.agent_site_dirs())
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
            # --without-pip: the agent environment's pip is visible through the layer, and
            # ensurepip is slow (and missing on some distributions' Pythons).
            await _run(
                [self.python, "-m", "venv", "--without-pip", str(temporary)],
                what="creating the virtual environment",
            )
            purelib = await _run(
                [str(venv_python(temporary)), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                what="reading the virtual environment's layout",
            )
            layer = Path(purelib.splitlines()[-1].strip()) / _LAYER_FILE
            layer.parent.mkdir(parents=True, exist_ok=True)
            layer.write_text(layer_lines(await self.agent_site_dirs()))
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


async def _run(command: list[str], *, what: str) -> str:
    """Run a build step and return its output; on failure raise with its last output lines, the
    useful part of pip's."""
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
    return output.decode("utf-8", errors="replace")
