"""Mosquitto configuration for a fleet: mTLS only, identities from certificates, an ACL per role.

Why it is generated rather than documented only: the ACL is the one place where a mistake lets a
device write where it must not (another device's reports, or the deployments every device reads),
and it must follow the topic layout in `modules/topics.py` exactly. Generating it from the same
topic builders keeps the two from drifting.

What the generated files rely on (Mosquitto 2.x):

- `require_certificate true` + `use_identity_as_username true`: no connection without a client
  certificate from the fleet CA, and the certificate's CN replaces whatever user name the client
  sends. `allow_anonymous false` then also refuses a certificate that has no CN.
- `acl_file`: what is not granted is denied. Publishers get `user` blocks (one per publisher CN,
  `publisher@<name>`); devices get `pattern` lines with `%u`, so one file serves every device and
  enrolling a device never touches the broker.
- `crlfile`: revoked certificates (`modelfleet pki revoke`) are refused at the TLS handshake.
- `message_size_limit` drops (without disconnecting) a publish whose payload is over the limit;
  `max_packet_size` disconnects a client that sends a packet over the limit plus room for a
  maximal topic, so no client can make the broker buffer more than about that.

The files are written into one folder (config, ACL, the broker's key and certificates, the CRL) so
that the folder can be handed to the broker's user as a whole (`chown -R mosquitto`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, Field

from modules import ConfigError
from modules.pki import CA_CERT, CRL, SERVER_CERT, SERVER_KEY, PkiLayout, load_ca, publisher_cn
from modules.topics import FleetTopics

DEFAULT_PORT = 8883
DEFAULT_BIND = "127.0.0.1"
DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB: a deployment document or a report is a few KiB
# The most an MQTT PUBLISH adds to its payload: fixed header (5), topic length and topic (2 + 65535),
# packet id (2), and MQTT 5 properties we do not bound otherwise (a little).
PACKET_HEADROOM = 5 + 2 + 65535 + 2 + 1024
# A publisher's wildcard subscription over every device's retained report is one queue: Mosquitto's
# default (1000) would cut `modelfleet status` short on a larger fleet.
DEFAULT_MAX_QUEUED = 100_000

FLEET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"


class BrokerConfigRequest(BaseModel):
    """What `modelfleet broker config` was asked for, validated before anything is written."""

    mosquitto_dir: Path
    pki_dir: Path
    fleet: str
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    bind: str = DEFAULT_BIND
    max_payload: int = Field(DEFAULT_MAX_PAYLOAD, ge=1024, le=256 << 20)
    publishers: list[str] = Field(default_factory=list)  # empty: every publisher the CA has issued
    user: str | None = None  # the account Mosquitto drops to when started as root
    max_queued: int = Field(DEFAULT_MAX_QUEUED, ge=1000)


class BrokerFiles(BaseModel):
    config: Path
    acl: Path
    publishers: list[str]  # the CNs given the whole fleet prefix


def acl_text(fleet: str, publisher_cns: list[str]) -> str:
    """The ACL for one fleet: publishers may do anything under the prefix, a device only its own."""
    t = FleetTopics(fleet)
    dev = "%u"
    lines = [
        f"# modelfleet ACL for fleet {fleet}, written by `modelfleet broker config`.",
        "# Mosquitto denies whatever is not granted here. The user name is the client certificate's",
        "# CN (use_identity_as_username): `publisher@<name>` for publishers, the device id for devices.",
        "",
        "# Devices (every certificate; %u = its CN = its device id).",
        "# Read: the fleet's deployments, and its own desired document, sealed keys and method requests.",
        f"pattern read {t.all_deployments}",
        f"pattern read {t.desired(dev)}",
        f"pattern read {t.all_keys(dev)}",
        f"pattern read {t.method_requests(dev)}",
        "# Write: its own reported state, presence (and last will), telemetry and method responses.",
        f"pattern write {t.reported(dev)}",
        f"pattern write {t.status(dev)}",
        f"pattern write {t.telemetry(dev)}",
        f"pattern write {t.method_response(dev, '+')}",
        "",
        "# Publishers: everything under the fleet prefix (deployments, per-device documents and keys,",
        "# method requests, every report, and the publisher's own sync topic).",
    ]
    for cn in publisher_cns:
        lines += [f"user {cn}", f"topic readwrite {t.prefix}/#", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def mosquitto_conf_text(request: BrokerConfigRequest, folder: Path, acl: Path) -> str:
    """A config usable both as `mosquitto -c FILE` and dropped into Debian's /etc/mosquitto/conf.d:
    only listener, TLS, authentication and limit options, no pid file, persistence or logging."""
    lines = [
        "# modelfleet broker config, written by `modelfleet broker config`; see docs/security.md.",
        "allow_anonymous false",
        f"acl_file {acl}",
        f"message_size_limit {request.max_payload}",
        f"max_packet_size {request.max_payload + PACKET_HEADROOM}",
        f"max_queued_messages {request.max_queued}",
    ]
    if request.user:
        lines.append(f"user {request.user}")
    lines += [
        "",
        f"listener {request.port} {request.bind}",
        f"cafile {folder / CA_CERT}",
        f"certfile {folder / SERVER_CERT}",
        f"keyfile {folder / SERVER_KEY}",
        f"crlfile {folder / CRL}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    return "\n".join(lines) + "\n"


def _copy(src: Path, dst: Path, mode: int) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(mode)
    os.replace(tmp, dst)


def write_broker_config(request: BrokerConfigRequest) -> BrokerFiles:
    """Write config, ACL, the broker's key and certificate, the CA certificate and the CRL."""
    if not FLEET_RE.match(request.fleet):
        raise ConfigError(
            f"invalid fleet name {request.fleet!r}: 1-64 of letters, digits, '.', '_', '-' "
            "(it becomes one MQTT topic level)"
        )
    ca = load_ca(request.pki_dir)
    layout = PkiLayout(Path(request.pki_dir))
    server_cert, server_key = layout.server / SERVER_CERT, layout.server / SERVER_KEY
    if not server_cert.is_file() or not server_key.is_file():
        raise ConfigError(
            f"no broker certificate in {layout.server}; run "
            f"`modelfleet pki server --dir {request.pki_dir} --host HOST` first"
        )
    names = request.publishers or layout.publisher_names()
    if not names:
        raise ConfigError(
            f"no publisher certificate in {request.pki_dir}: issue one first "
            f"(`modelfleet pki issue --dir {request.pki_dir} --publisher NAME`) or name it with --publisher"
        )
    cns = [publisher_cn(n) for n in dict.fromkeys(names)]

    folder = request.mosquitto_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o750)
    _copy(ca.layout.ca_cert, folder / CA_CERT, 0o644)
    _copy(ca.layout.crl, folder / CRL, 0o644)
    _copy(server_cert, folder / SERVER_CERT, 0o644)
    _copy(server_key, folder / SERVER_KEY, 0o600)
    acl = folder / ACL_NAME
    acl.write_text(acl_text(request.fleet, cns))
    acl.chmod(0o644)
    config = folder / CONF_NAME
    config.write_text(mosquitto_conf_text(request, folder, acl))
    config.chmod(0o644)
    return BrokerFiles(config=config, acl=acl, publishers=cns)
