"""`modelfleet broker config`: the generated Mosquitto config and ACL, read as text.

The behaviour of the same files in a real Mosquitto is in test_broker_acl.py; this checks that the
ACL follows `modules.topics` for every topic an agent uses, so the two cannot drift apart.
"""

from __future__ import annotations

import stat
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from modules import ConfigError, pki
from modules.topics import FleetTopics
from publisher import pki_cli
from publisher._broker_config import PACKET_HEADROOM, BrokerConfigRequest, acl_text, write_broker_config

FLEET = "factory"


def grants(acl: str, username: str, access: str) -> list[str]:
    """The topic filters `username` gets for `access` ("read"/"write"), as Mosquitto reads the file."""
    found: list[str] = []
    user: str | None = None
    for raw in acl.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "user":
            user = rest
            continue
        kind, _, topic = rest.partition(" ")
        if kind not in (access, "readwrite"):
            continue
        if word == "pattern":
            found.append(topic.replace("%u", username))
        elif word == "topic" and user == username:
            found.append(topic)
    return found


def allowed(acl: str, username: str, access: str, topic: str) -> bool:
    return any(mqtt.topic_matches_sub(f, topic) for f in grants(acl, username, access))


ACL = acl_text(FLEET, ["publisher@main"])
T = FleetTopics(FLEET)


@pytest.mark.parametrize(
    "topic",
    [T.reported("d1"), T.status("d1"), T.telemetry("d1"), T.method_response("d1", "r1")],
)
def test_a_device_may_write_its_own_state(topic: str) -> None:
    assert allowed(ACL, "d1", "write", topic)


@pytest.mark.parametrize(
    "topic",
    [
        T.deployment("web"),
        T.desired("d1"),
        T.keys("d1", "web"),
        T.method_request("d1", "ping", "r1"),
        T.reported("d2"),
        T.status("d2"),
        T.telemetry("d2"),
        T.method_response("d2", "r1"),
        f"{T.prefix}/publisher/sync/x",
        "modelfleet/other-fleet/devices/d1/reported",
        "$SYS/broker/uptime",
    ],
)
def test_a_device_may_write_nothing_else(topic: str) -> None:
    assert not allowed(ACL, "d1", "write", topic)


@pytest.mark.parametrize(
    "topic", [T.deployment("web"), T.desired("d1"), T.keys("d1", "web"), T.method_request("d1", "ping", "r1")]
)
def test_a_device_reads_deployments_and_what_is_addressed_to_it(topic: str) -> None:
    assert allowed(ACL, "d1", "read", topic)


@pytest.mark.parametrize(
    "topic",
    [
        T.desired("d2"),
        T.keys("d2", "web"),
        T.method_request("d2", "ping", "r1"),
        T.reported("d2"),
        T.status("d2"),
    ],
)
def test_a_device_reads_nothing_of_another_device(topic: str) -> None:
    assert not allowed(ACL, "d1", "read", topic)


@pytest.mark.parametrize(
    "topic",
    [
        T.deployment("web"),
        T.desired("d1"),
        T.keys("d1", "web"),
        T.method_request("d1", "ping", "r1"),
        T.reported("d1"),
        f"{T.prefix}/publisher/sync/x",
    ],
)
def test_the_publisher_reads_and_writes_the_whole_fleet(topic: str) -> None:
    assert allowed(ACL, "publisher@main", "write", topic)
    assert allowed(ACL, "publisher@main", "read", topic)
    assert not allowed(ACL, "publisher@main", "write", topic.replace(FLEET, "other-fleet", 1))


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ca"
    pki.init_ca(root)
    pki.issue_server(root, ["127.0.0.1"])
    pki.issue_client(root, publisher="main")
    pki.issue_client(root, publisher="ci")
    return root


def test_the_config_requires_client_certificates_and_limits_payloads(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mosquitto"
    files = write_broker_config(
        BrokerConfigRequest(mosquitto_dir=out, pki_dir=ca_dir, fleet=FLEET, port=18883)
    )
    lines = files.config.read_text().splitlines()
    for expected in (
        "allow_anonymous false",
        f"acl_file {files.acl}",
        "listener 18883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        f"crlfile {out.resolve() / 'crl.pem'}",
        f"message_size_limit {1 << 20}",
        f"max_packet_size {(1 << 20) + PACKET_HEADROOM}",
    ):
        assert expected in lines
    assert not any(line.startswith(("password_file", "user ")) for line in lines)
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    assert files.publishers == ["publisher@ci", "publisher@main"]  # every publisher the CA issued
    acl = files.acl.read_text()
    assert "user publisher@ci\n" in acl and "user publisher@main\n" in acl


def test_named_publishers_only(ca_dir: Path, tmp_path: Path) -> None:
    request = BrokerConfigRequest(
        mosquitto_dir=tmp_path / "m", pki_dir=ca_dir, fleet=FLEET, publishers=["ci"]
    )
    assert write_broker_config(request).publishers == ["publisher@ci"]


def test_a_broker_without_its_certificate_is_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca")
    pki.issue_client(tmp_path / "ca", publisher="main")
    request = BrokerConfigRequest(mosquitto_dir=tmp_path / "m", pki_dir=tmp_path / "ca", fleet=FLEET)
    with pytest.raises(ConfigError, match="pki server"):
        write_broker_config(request)


@pytest.mark.parametrize("fleet", ["a/b", "+", "#", "", "has space"])
def test_a_fleet_name_that_is_not_one_topic_level_is_refused(
    ca_dir: Path, tmp_path: Path, fleet: str
) -> None:
    with pytest.raises(ConfigError, match="invalid fleet name"):
        write_broker_config(BrokerConfigRequest(mosquitto_dir=tmp_path / "m", pki_dir=ca_dir, fleet=fleet))


def test_the_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, device, out = tmp_path / "ca", tmp_path / "device", tmp_path / "mosquitto"
    assert pki_cli.main(["pki", "init", "--dir", str(ca), "--name", "plant CA"]) == 0
    assert pki_cli.main(["pki", "issue", "--dir", str(ca), "--publisher", "main"]) == 0
    assert (
        pki_cli.main(["pki", "server", "--dir", str(ca), "--host", "127.0.0.1", "--host", "localhost"]) == 0
    )
    assert pki_cli.main(["pki", "request", "--device", "press-07", "--out", str(device)]) == 0
    csr = str(device / "client.csr")
    assert pki_cli.main(["pki", "sign", "--dir", str(ca), csr, "--device", "press-08"]) == 2
    assert "refusing to sign" in capsys.readouterr().err
    assert pki_cli.main(["pki", "sign", "--dir", str(ca), csr, "--device", "press-07", "--json"]) == 0
    assert '"common_name": "press-07"' in capsys.readouterr().out
    argv = ["broker", "config", "--mosquitto", str(out), "--pki", str(ca), "--fleet", FLEET, "--port", "0"]
    assert pki_cli.main(argv) == 2
    assert "--port" in capsys.readouterr().err
    assert pki_cli.main([*argv[:-1], "8883"]) == 0
    assert (out / "mosquitto.conf").is_file() and (out / "acl").is_file()
    assert pki_cli.main(["pki", "revoke", "--dir", str(ca), "--device", "press-07"]) == 0
