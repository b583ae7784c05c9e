"""ONNX Runtime sessions built the same way everywhere: preferred providers, sized threads.

Provider choice is a pure function so it can be tested without a GPU; the one log line it
produces when the module's preference cannot be met is what an operator greps for when a device
is unexpectedly slow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._settings import ScoringSettings

log = logging.getLogger("modelfleet.scoring")

ORT_PROVIDER_NAMES: dict[str, str] = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_CPU = ORT_PROVIDER_NAMES["cpu"]


def choose_providers(preference: Sequence[str], available: Sequence[str]) -> tuple[list[str], str | None]:
    """Preference intersected with what is installed, CPU always last.

    Returns the ONNX Runtime provider names and, when a preferred accelerator is missing, the
    message to log (None when everything asked for is there).
    """
    wanted = [ORT_PROVIDER_NAMES[name] for name in preference]
    chosen = [name for name in wanted if name in available]
    if _CPU not in chosen:
        chosen.append(_CPU)
    missing = [short for short in preference if ORT_PROVIDER_NAMES[short] not in available]
    missing = [short for short in missing if short != "cpu"]
    if not missing:
        return chosen, None
    message = (
        f"execution providers: {', '.join(missing)} not available here "
        f"(installed: {', '.join(available) or 'none'}); using {', '.join(chosen)}"
    )
    if chosen == [_CPU]:
        message += " - falling back to CPU"
    return chosen, message


def create_session(path: Path | str, settings: ScoringSettings) -> Any:
    """An InferenceSession for `path` with the module's provider preference and thread sizing."""
    import onnxruntime as ort

    providers, fallback_message = choose_providers(
        settings.execution_providers, ort.get_available_providers()
    )
    if fallback_message:
        log.warning(fallback_message)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.resolved_intra_op_threads()
    # Concurrency comes from running several requests at once, not from parallel graph branches.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    active = session.get_providers()
    if active[0] != providers[0]:
        log.warning(
            "execution providers: %s failed to start; running on %s",
            providers[0],
            ", ".join(active),
        )
    log.info(
        "loaded %s on %s (intra-op threads %d)",
        path,
        ", ".join(active),
        options.intra_op_num_threads,
    )
    return session
