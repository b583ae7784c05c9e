"""The scoring host that runs inside every module: Azure ML's entry-script contract and the
Open Inference Protocol v2 over ONNX Runtime.

Heavy imports (onnxruntime, the app) happen on first use, so importing this package to reach a
name stays cheap for the edge agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._settings import BatchingSettings, ProviderName, ScoringSettings

if TYPE_CHECKING:
    from ._app import create_app
    from ._onnx_session import choose_providers, create_session
    from ._raw_http import AMLRequest, AMLResponse, rawhttp
    from ._schema import (
        NumpyParameterType,
        PandasParameterType,
        StandardPythonParameterType,
        input_schema,
        output_schema,
    )
    from ._server import run_server, serve

_LAZY = {
    "create_app": "._app",
    "choose_providers": "._onnx_session",
    "create_session": "._onnx_session",
    "AMLRequest": "._raw_http",
    "AMLResponse": "._raw_http",
    "rawhttp": "._raw_http",
    "NumpyParameterType": "._schema",
    "PandasParameterType": "._schema",
    "StandardPythonParameterType": "._schema",
    "input_schema": "._schema",
    "output_schema": "._schema",
    "run_server": "._server",
    "serve": "._server",
}

__all__ = [
    "AMLRequest",
    "AMLResponse",
    "BatchingSettings",
    "NumpyParameterType",
    "PandasParameterType",
    "ProviderName",
    "ScoringSettings",
    "StandardPythonParameterType",
    "choose_providers",
    "create_app",
    "create_session",
    "input_schema",
    "output_schema",
    "rawhttp",
    "run_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name, __name__), name)
