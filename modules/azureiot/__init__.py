"""Azure IoT Hub as the agent's control plane: the device twin, direct methods and D2C messages
behind the same `Transport` the MQTT client implements. The SDK (`azure-iot-device`, the `azure`
extra) is imported only when a connection starts, so this package imports without it."""

from modules.azureiot._settings import SCHEME, IotHubSettings, hub_host, parse_connection_string
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
