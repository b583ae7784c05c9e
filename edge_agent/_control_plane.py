"""Which control plane an agent talks to, chosen by the scheme of its `hub` setting.

The agent only sees `modules.transport.Transport`; this is the one place that knows the concrete
clients, so a second control plane is a new branch here and nothing in the agent's decisions.
"""

from __future__ import annotations

from edge_agent._config import AgentConfig
from modules.mqtt import MqttSettings, MqttTransport
from modules.transport import Transport

# (topic, payload, retain) the control plane publishes for the device if its connection dies
Will = tuple[str, bytes, bool]


def default_transport(config: AgentConfig, will: Will) -> Transport:
    """The transport for `config.hub`: `mqtt://` and `mqtts://` (Mosquitto, the embedded hub)."""
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
