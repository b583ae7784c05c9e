"""How an agent reaches IoT Hub: `azureiot://<hub host>` plus a device connection string
(symmetric key) or an X.509 certificate and key, and optionally the CA that signs the hub's server
certificate (a gateway's, or a test hub's)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from modules import ConfigError

SCHEME = "azureiot"


def parse_connection_string(text: str) -> dict[str, str]:
    """`HostName=...;DeviceId=...;SharedAccessKey=...` as a mapping (keys as IoT Hub spells them)."""
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError("an IoT Hub connection string is `Key=value` pairs separated by `;`")
        fields[key.strip()] = value.strip()
    return fields


def hub_host(url: str) -> str | None:
    """The host named by an `azureiot://host` hub setting (None for a bare `azureiot://`)."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ConfigError(f"not an IoT Hub URL (azureiot://<hub host>): {url}")
    return parts.hostname or None


class IotHubSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    device_id: str
    fleet: str
    hostname: str | None = None
    connection_string: SecretStr | None = None
    x509_cert_file: Path | None = None
    x509_key_file: Path | None = None
    ca_file: Path | None = None
    keep_alive_s: int = Field(60, ge=10, le=1740)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # get_twin and the other SDK calls have no timeout of their own
    operation_timeout_s: float = Field(30.0, gt=0)
    # a method request the agent never answered is answered 504 after this (IoT Hub allows 300 s)
    method_answer_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_credential(self) -> IotHubSettings:
        x509 = (self.x509_cert_file, self.x509_key_file)
        if self.connection_string is not None:
            if any(x509):
                raise ValueError("give a connection string or an X.509 certificate and key, not both")
            fields = parse_connection_string(self.connection_string.get_secret_value())
            if fields.get("DeviceId") != self.device_id:
                raise ValueError(
                    f"the connection string is for device {fields.get('DeviceId')!r}, not {self.device_id!r}"
                )
            if not fields.get("HostName") or not (fields.get("SharedAccessKey") or fields.get("x509")):
                raise ValueError("the connection string needs HostName and SharedAccessKey")
            if self.hostname and self.hostname != fields["HostName"]:
                raise ValueError(
                    f"the hub URL names {self.hostname} but the connection string {fields['HostName']}"
                )
        elif all(x509):
            if not self.hostname:
                raise ValueError("with an X.509 certificate, the hub URL names the hub: azureiot://<host>")
        else:
            raise ValueError("IoT Hub needs a device connection string, or an X.509 certificate and key")
        return self
