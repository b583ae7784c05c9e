"""`azureml.core.model.Model.get_model_path` for entry scripts, without azureml-core.

Azure ML v1's documented way for `init()` to find a model is
`Model.get_model_path("name")`. Inside a scoring container that call never reaches a
workspace: it looks in the local `azureml-models` folder (`<name>/<version>/<one file or
folder>`, the latest version unless one is asked for) and then at `./<name>`. The host points
the same search at the module's models root, so scripts keep that line unchanged; a real
installed azureml-core always wins (see `_raw_http.install_azureml_aliases`).
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_ROOT_ENV = "MODELFLEET_MODELS_ROOT"


class WebserviceException(Exception):
    """Azure ML's error for a bad call; scripts catch it by this name."""

    def __init__(self, exception_message: str, **_: object) -> None:
        super().__init__(exception_message)
        self.message = exception_message


class ModelNotFoundException(WebserviceException):
    """No model of that name (and version) where the scoring host keeps models."""


def _models_root() -> Path | None:
    root = os.environ.get(MODELS_ROOT_ENV) or os.environ.get("AZUREML_MODEL_DIR")
    return Path(root) if root else None


def _latest_version(folder: Path) -> str | None:
    numbers = [int(entry.name) for entry in folder.iterdir() if entry.is_dir() and entry.name.isdigit()]
    return str(max(numbers)) if numbers else None


class Model:
    """The part of `azureml.core.model.Model` an entry script uses inside a scoring host."""

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: object = None) -> str:
        """The path of model `model_name`: `<root>/<name>/<version>/<its one entry>`.

        As in Azure ML v1: the latest version when none is given; a version folder holding more
        than one entry is an error (the caller should join the file name itself); a name not in
        the root is looked up in the model folder and the working directory.
        """
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise WebserviceException("version should be an int")
        if model_name is None:
            raise WebserviceException("model_name is None")
        root = _models_root()
        if root is not None and (root / model_name).is_dir():
            chosen = str(version) if version is not None else _latest_version(root / model_name)
            candidate = root / model_name / chosen if chosen is not None else None
            if candidate is not None and candidate.is_dir():
                entries = sorted(os.listdir(candidate))
                if len(entries) != 1:
                    raise WebserviceException(
                        f"Dir {candidate} can contain only 1 file or folder. Found {entries}"
                    )
                return str(candidate / entries[0])
        for base in (os.environ.get("AZUREML_MODEL_DIR"), os.getcwd()):
            if base and os.path.exists(os.path.join(base, model_name)):
                return os.path.join(base, model_name)
        raise ModelNotFoundException(
            f"Model {model_name} not found in cache at {root} or in current working directory "
            f"{os.getcwd()}. For more info, set logging level to DEBUG."
        )
