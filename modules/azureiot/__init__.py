"""Azure IoT Hub as the agent's control plane: the device twin, direct methods and D2C messages
behind the same `Transport` the MQTT client implements. The SDK (`azure-iot-device`, the `azure`
extra) is imported only when a connection starts, so this package imports without it.

The transport and the twin mapping are imported on first use: an agent on MQTT only needs
`SCHEME` to know it is not talking to IoT Hub, and never pays for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modules.azureiot._settings import SCHEME, IotHubSettings, hub_host, parse_connection_string

if TYPE_CHECKING:
    from modules.azureiot._transport import IotHubTransport
    from modules.azureiot._twin import (
        desired_document_patch,
        document_slots,
        join_text,
        merge_patch,
        reported_summary,
        split_text,
        state_from_summary,
    )

_LAZY = {
    "IotHubTransport": "modules.azureiot._transport",
    "desired_document_patch": "modules.azureiot._twin",
    "document_slots": "modules.azureiot._twin",
    "join_text": "modules.azureiot._twin",
    "merge_patch": "modules.azureiot._twin",
    "reported_summary": "modules.azureiot._twin",
    "split_text": "modules.azureiot._twin",
    "state_from_summary": "modules.azureiot._twin",
}

__all__ = [
    "SCHEME",
    "IotHubSettings",
    "IotHubTransport",
    "desired_document_patch",
    "document_slots",
    "hub_host",
    "join_text",
    "merge_patch",
    "parse_connection_string",
    "reported_summary",
    "split_text",
    "state_from_summary",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modules.azureiot' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
