"""Which control plane an agent talks to, chosen by the scheme of its `hub` setting.

The agent only sees `modules.transport.Transport`; this is the one place that knows the concrete
clients, so a second control plane is a new branch here and nothing in the agent's decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from edge_agent._config import AgentConfig
from modules import ConfigError
from modules.azureiot import SCHEME as IOTHUB_SCHEME
from modules.azureiot import IotHubSettings, hub_host
from modules.mqtt import MqttSettings, MqttTransport
from modules.transport import Transport

if TYPE_CHECKING:
    from modules.azureiot import IotHubTransport

# (topic, payload, retain) the control plane publishes for the device if its connection dies
Will = tuple[str, bytes, bool]


def default_transport(config: AgentConfig, will: Will) -> Transport:
    """The transport for `config.hub`: `mqtt://` and `mqtts://` (Mosquitto, the embedded hub), or
    `azureiot://<hub host>` (Azure IoT Hub through azure-iot-device; IoT Hub has no last will:
    its own twin shows whether the device is connected, see docs/azure-iot-hub.md)."""
    if config.hub.startswith(f"{IOTHUB_SCHEME}:"):
        return iothub_transport(config)
    settings = MqttSettings(
        url=config.hub,
        client_id=f"modelfleet-agent-{config.fleet}-{config.device_id}",
        username=config.mqtt_username,
        password=config.secret("mqtt_password"),
        tls_ca_file=config.mqtt_tls_ca_file,
        tls_cert_file=config.mqtt_tls_cert_file,
        tls_key_file=config.mqtt_tls_key_file,
    )
    return MqttTransport(settings, will=will, max_payload_bytes=config.max_payload_bytes)


def iothub_transport(config: AgentConfig) -> IotHubTransport:
    # imported here: an agent on MQTT never loads the IoT Hub transport
    from modules.azureiot import IotHubTransport

    try:
        settings = IotHubSettings(
            device_id=config.device_id,
            fleet=config.fleet,
            hostname=hub_host(config.hub),
            connection_string=config.secret("iothub_connection_string"),
            x509_cert_file=config.iothub_x509_cert_file,
            x509_key_file=config.iothub_x509_key_file,
            ca_file=config.iothub_ca_file,
        )
    except ValidationError as exc:
        raise ConfigError(f"IoT Hub settings: {exc.errors()[0]['msg']}") from None
    return IotHubTransport(settings, max_payload_bytes=config.max_payload_bytes)
