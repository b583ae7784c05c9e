"""Turning an entry script, its source folder and its environment into module layers and a spec.

The code layer is a reproducible tar.gz (sorted entries; `modules.artifact.code_archive` zeroes
times and owners), so the same source gives the same digest and a re-package uploads nothing new.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from modules import InvalidPackageError
from modules.artifact import CodeFile, code_archive

_SKIP = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", ".mypy_cache", ".pytest_cache"}
_MAX_SAMPLE_BYTES = 1 << 20
log = logging.getLogger("modelfleet.package")

AZUREML_SERVING_PACKAGES = frozenset(
    {"azureml-defaults", "azureml-inference-server-http", "azureml-core", "azureml-contrib-services"}
)
"""What Azure ML installs to serve an entry script. The scoring host is modelfleet's replacement
(with `azureml.core.model.Model` and `azureml.contrib.services` stand-ins), so installing them on
a device would only add hundreds of MB and shadow the host's own stand-ins."""

DEVICE_PYTHON = SpecifierSet(">=3.11")
"""The Pythons a module can meet on a device: modules run on the agent's interpreter, and the agent
needs 3.11 or later. Conda's own interpreter is never installed on a device."""
_PROBE_VERSIONS = [
    Version(f"{major}.{minor}.{micro}")
    for major, minor in [(2, 7), *((3, m) for m in range(16)), (4, 0)]
    for micro in (0, 2, 99)
]


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


def _note(notes: list[str] | None, text: str) -> None:
    """A one-line note on stderr (the logger's last-resort handler, when nothing is configured,
    which is the CLI's and a notebook's case) and, for callers that show it, on the module."""
    log.warning("note: %s", text)
    if notes is not None:
        notes.append(text)


def drop_serving_packages(lines: list[str], origin: str, notes: list[str] | None = None) -> list[str]:
    """The requirements without Azure ML's serving stack, which the scoring host replaces."""
    kept, dropped = [], []
    for line in lines:
        name = canonicalize_name(Requirement(line).name)
        (dropped if name in AZUREML_SERVING_PACKAGES else kept).append(line)
    if dropped:
        _note(
            notes,
            f"{origin}: not installed on devices: {', '.join(dropped)} "
            "(Azure ML's serving stack; modelfleet's scoring host replaces it)",
        )
    return kept


def read_requirements(path: str | Path, notes: list[str] | None = None) -> list[str]:
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidPackageError(f"cannot read requirements file {file}: {exc.strerror}") from None
    lines = [line.split(" #")[0].strip() for line in text.splitlines()]
    checked = _check_requirements([line for line in lines if line and not line.startswith("#")], str(file))
    return drop_serving_packages(checked, file.name, notes)


def conda_python_specifier(spec: str) -> SpecifierSet | None:
    """A conda `python` match spec (`python=3.6.2`, `python==3.8`, `python>=3.8,<3.10`,
    `python 3.7.*`, `conda-forge::python=3.9`) as a PEP 440 specifier; None for a bare `python`.

    Conda's single `=` (and a bare version) means "this version or any release under it": `=3.6`
    is 3.6.*; a build string after a second `=` says nothing about the version."""
    text = re.sub(r"^python", "", spec.split("::")[-1].strip()).strip()
    if not text:
        return None
    if text[0].isdigit() or (text.startswith("=") and not text.startswith("==")):
        version = text.lstrip("=").split("=")[0].strip().rstrip("*").rstrip(".")
        text = f"=={version}.*"
    parts = [part.strip() for part in text.replace(" ", "").split(",")]
    try:
        return SpecifierSet(",".join(parts))
    except InvalidSpecifier:
        raise InvalidPackageError(f"cannot read the Python pin {spec!r}: use e.g. python=3.11") from None


def check_python_pin(spec: str, origin: str, notes: list[str] | None = None) -> None:
    """Refuse a pin to another major Python (no Python 3 on a device can run Python 2 code); warn
    for a Python 3 pin devices may not meet, since Python 3 scripts of this kind run on later 3.x
    (a seed written for 3.6 usually does) and the device's interpreter is what will run it."""
    specifier = conda_python_specifier(spec)
    if specifier is None:
        return
    admitted = [v for v in _PROBE_VERSIONS if specifier.contains(v, prereleases=True)]
    if not any(v.major == 3 for v in admitted):
        raise InvalidPackageError(
            f"{origin}: pins {spec!r}: devices run the modules on their agent's Python 3 "
            f"({DEVICE_PYTHON}), never on Python 2 or a conda interpreter; port the script to Python 3 "
            "and drop the pin"
        )
    on_devices = [v for v in admitted if DEVICE_PYTHON.contains(v)]
    if not on_devices:
        _note(
            notes,
            f"{origin}: pins {spec}, which no device has: conda's Python is not installed, the "
            f"module runs on the device agent's Python ({DEVICE_PYTHON})",
        )
    elif any(DEVICE_PYTHON.contains(v) and not specifier.contains(v) for v in _PROBE_VERSIONS):
        _note(
            notes,
            f"{origin}: pins {spec}; the module runs on the device agent's Python ({DEVICE_PYTHON}), "
            "whichever version that device has",
        )


def read_conda_pip_section(path: str | Path, notes: list[str] | None = None) -> list[str]:
    """The pip section of a conda environment file; conda-only packages cannot run on a device.

    The `python` pin is checked against what devices run (`check_python_pin`), and Azure ML's
    serving packages are left out (`drop_serving_packages`)."""
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
        elif isinstance(dep, str | int | float):
            dep = str(dep)
            package = re.split(r"[=<>!~ ]", dep.split("::")[-1].strip(), maxsplit=1)[0].strip()
            if package == "python":
                check_python_pin(dep, file.name, notes)
            elif package != "pip":
                conda_only.append(dep)
        else:
            raise InvalidPackageError(f"{file}: unexpected dependency entry {dep!r}")
    if conda_only:
        raise InvalidPackageError(
            f"{file}: conda-only dependencies are not supported on devices: {', '.join(conda_only)}; "
            "move them to the pip section"
        )
    return drop_serving_packages(_check_requirements(pip, str(file)), file.name, notes)


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
