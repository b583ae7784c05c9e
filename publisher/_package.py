"""Turning an entry script, its source folder and its environment into module layers and a spec.

The code layer is a reproducible tar.gz (sorted entries; `modules.artifact.code_archive` zeroes
times and owners), so the same source gives the same digest and a re-package uploads nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from modules import InvalidPackageError
from modules.artifact import CodeFile, code_archive

_SKIP = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", ".mypy_cache", ".pytest_cache"}
_MAX_SAMPLE_BYTES = 1 << 20


def resolve_entry_script(
    entry_script: str | Path | None, source_dir: str | Path | None
) -> tuple[Path, Path] | None:
    """(source folder, script) with the script inside the folder; None for a zero-code module."""
    if entry_script is None:
        if source_dir is not None:
            raise InvalidPackageError("--source-dir needs --entry-script (the script to run inside it)")
        return None
    script = Path(entry_script).expanduser()
    if source_dir is None:
        if not script.is_file():
            raise InvalidPackageError(f"entry script {script} does not exist")
        return script.resolve().parent, script.resolve()
    folder = Path(source_dir).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidPackageError(f"source folder {source_dir} does not exist")
    candidate = script if script.is_absolute() else folder / script
    if not candidate.is_file() and script.is_file():
        candidate = script.resolve()
    candidate = candidate.resolve()
    if not candidate.is_file():
        raise InvalidPackageError(f"entry script {entry_script} does not exist in {folder}")
    if not candidate.is_relative_to(folder):
        raise InvalidPackageError(f"entry script {entry_script} is not inside the source folder {folder}")
    if candidate.suffix != ".py":
        raise InvalidPackageError(f"entry script {entry_script} is not a .py file")
    return folder, candidate


def build_code_layer(folder: Path, script: Path, *, whole_folder: bool) -> bytes:
    """A deterministic tar.gz of the source folder (or of the lone entry script)."""
    if whole_folder:
        files = [
            p
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not _SKIP.intersection(p.relative_to(folder).parts) and p.suffix != ".pyc"
        ]
    else:
        files = [script]
    return code_archive(
        CodeFile(path.relative_to(folder).as_posix(), path.read_bytes(), bool(path.stat().st_mode & 0o111))
        for path in files
    )


def _check_requirements(lines: list[str], origin: str) -> list[str]:
    for line in lines:
        if line.startswith("-"):
            raise InvalidPackageError(
                f"{origin}: pip options such as {line.split()[0]!r} are not supported; list requirements only"
            )
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise InvalidPackageError(f"{origin}: invalid requirement {line!r}: {exc}") from None
    return lines


def read_requirements(path: str | Path) -> list[str]:
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidPackageError(f"cannot read requirements file {file}: {exc.strerror}") from None
    lines = [line.split(" #")[0].strip() for line in text.splitlines()]
    return _check_requirements([line for line in lines if line and not line.startswith("#")], str(file))


def read_conda_pip_section(path: str | Path) -> list[str]:
    """The pip section of a conda environment file; conda-only packages cannot run on a device."""
    file = Path(path).expanduser()
    try:
        env = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise InvalidPackageError(f"cannot read conda file {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidPackageError(f"{file} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(env, dict) or not isinstance(env.get("dependencies", []), list):
        raise InvalidPackageError(f"{file} is not a conda environment file (no dependencies list)")
    pip: list[str] = []
    conda_only: list[str] = []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            pip += [str(x).strip() for x in dep["pip"] or []]
        elif isinstance(dep, str):
            package = dep.split("::")[-1].split("=")[0].split("<")[0].split(">")[0].strip()
            if package not in ("python", "pip"):
                conda_only.append(dep)
        else:
            raise InvalidPackageError(f"{file}: unexpected dependency entry {dep!r}")
    if conda_only:
        raise InvalidPackageError(
            f"{file}: conda-only dependencies are not supported on devices: {', '.join(conda_only)}; "
            "move them to the pip section"
        )
    return _check_requirements(pip, str(file))


def read_sample_input(path: str | Path) -> Any:
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > _MAX_SAMPLE_BYTES:
            raise InvalidPackageError(f"sample input {file} is over 1 MiB; use a smaller sample")
        return json.loads(file.read_text())
    except OSError as exc:
        raise InvalidPackageError(f"cannot read sample input {file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidPackageError(f"sample input {file} is not valid JSON: {exc}") from None
