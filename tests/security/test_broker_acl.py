"""The generated Mosquitto config with the issued certificates, in a real Mosquitto on 127.0.0.1.

What the broker enforces here is who may connect (mTLS against the fleet CA, a CRL) and who may
write or read which topic (the ACL, with the certificate's CN as the user name). MQTT 3.1.1 has no
way to refuse a publish: Mosquitto acknowledges a forbidden one and drops it. So every "cannot"
below is proven by ordering on one connection: the forbidden message is sent first, an allowed
marker after it; a subscriber allowed to see both gets the marker and must not have got the other.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from modules import pki
from modules.mqtt import Message, MqttConnectError, MqttSettings, MqttTransport
from modules.topics import FleetTopics
from publisher._broker_config import (
    DEFAULT_MAX_PAYLOAD,
    PACKET_HEADROOM,
    BrokerConfigRequest,
    write_broker_config,
)
from tests._services import Service, free_port, run_mosquitto_config

pytestmark = pytest.mark.services

FLEET = "plant"
T = FleetTopics(FLEET)
GUARD_S = 5.0  # hang guard only: on loopback every wait here ends in milliseconds


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class FleetBroker:
    service: Service
    publisher: Identity
    devices: dict[str, Identity]
    revoked: Identity
    stranger: Identity  # a device certificate from another CA
    log: Path


def _identity(issued: pki.IssuedCertificate, key: Path | None = None) -> Identity:
    key_file = key or issued.key_file
    assert key_file is not None
    return Identity(issued.cert_file, key_file, issued.ca_file)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    root = tmp_path_factory.mktemp("secure-broker")
    ca = root / "ca"
    pki.init_ca(ca)
    pki.issue_server(ca, ["127.0.0.1", "localhost"])
    publisher = _identity(pki.issue_client(ca, publisher="main"))
    dev_a = _identity(pki.issue_client(ca, device="dev-a"))
    key_b, csr_b = pki.create_request(root / "dev-b", "dev-b")  # the CSR flow: the key never left dev-b
    dev_b = _identity(pki.sign_request(ca, csr_b, device="dev-b", out=root / "dev-b"), key_b)
    revoked = _identity(pki.issue_client(ca, device="dev-lost"))
    pki.revoke(ca, device="dev-lost")
    pki.init_ca(root / "other-ca")
    stranger = _identity(pki.issue_client(root / "other-ca", device="dev-a"))
    stranger = Identity(stranger.cert, stranger.key, ca / pki.CA_CERT)  # trusts the right server

    port = free_port()
    files = write_broker_config(
        BrokerConfigRequest(
            mosquitto_dir=root / "mosquitto",
            pki_dir=ca,
            fleet=FLEET,
            port=port,
            # as root, Mosquitto would drop to user `mosquitto`, who cannot read pytest's temp dirs
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
    )
    with run_mosquitto_config(files.config, port) as service:
        assert service.url.startswith("mqtts://")
        yield FleetBroker(
            service,
            publisher,
            {"dev-a": dev_a, "dev-b": dev_b},
            revoked,
            stranger,
            files.config.parent / "mosquitto.log",
        )


Connect = Callable[..., Awaitable[MqttTransport]]


@pytest.fixture
async def connect(broker: FleetBroker) -> AsyncIterator[Connect]:
    """`await connect(identity | None, **settings)`: a started transport, stopped after the test."""
    made: list[MqttTransport] = []

    async def _connect(
        who: Identity | None,
        *,
        subscribe: tuple[str, ...] = (),
        connect_timeout: float = GUARD_S,
        **overrides: object,
    ) -> MqttTransport:
        values: dict[str, object] = {
            "url": broker.service.url,
            "client_id": f"t-{uuid.uuid4().hex[:10]}",
            "tls_ca_file": who.ca if who else broker.publisher.ca,
            "tls_cert_file": who.cert if who else None,
            "tls_key_file": who.key if who else None,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            **overrides,
        }
        transport = MqttTransport(MqttSettings.model_validate(values))
        made.append(transport)
        for topic in subscribe:
            transport.subscribe(topic)
        await transport.start(connect_timeout=connect_timeout)
        return transport

    yield _connect
    for transport in made:
        await transport.stop()


async def received_until(transport: MqttTransport, marker: str, *, retained: bool = False) -> list[Message]:
    """Every message up to and including the first on topic `marker`; retained ones (left by other
    tests on this module's broker) only when asked for."""
    got: list[Message] = []

    async def read() -> None:
        async for message in transport.messages():
            if message.retain and not retained:
                continue
            got.append(message)
            if message.topic == marker:
                return

    await asyncio.wait_for(read(), GUARD_S)
    return got


def topics(messages: list[Message]) -> list[str]:
    return [m.topic for m in messages]


FORBIDDEN_FOR_DEV_A = [
    T.deployment("evil"),
    T.desired("dev-a"),  # not even its own desired document: only a publisher writes that
    T.keys("dev-a", "web"),
    T.method_request("dev-a", "restartModule", "r1"),
    T.reported("dev-b"),
    T.status("dev-b"),
    T.telemetry("dev-b"),
    T.desired("dev-b"),
    T.keys("dev-b", "web"),
    T.method_request("dev-b", "ping", "r2"),
    T.method_response("dev-b", "r3"),
    f"{T.prefix}/publisher/sync/x",
]


async def test_a_device_cannot_write_outside_its_own_topics(broker: FleetBroker, connect: Connect) -> None:
    watcher = await connect(broker.publisher, subscribe=(f"{T.prefix}/#",))
    device = await connect(broker.devices["dev-a"])
    for topic in FORBIDDEN_FOR_DEV_A:
        await device.publish(topic, b"forged")  # acknowledged: MQTT 3.1.1 cannot say no
    marker = T.reported("dev-a")
    await device.publish(marker, b'{"device_id": "dev-a"}')
    got = await received_until(watcher, marker)
    assert topics(got) == [marker]


async def test_a_device_writes_its_own_state(broker: FleetBroker, connect: Connect) -> None:
    watcher = await connect(broker.publisher, subscribe=(f"{T.prefix}/devices/dev-a/#",))
    device = await connect(broker.devices["dev-a"])
    own = [T.reported("dev-a"), T.status("dev-a"), T.telemetry("dev-a"), T.method_response("dev-a", "r9")]
    for topic in own:
        await device.publish(topic, b"{}")
    assert topics(await received_until(watcher, own[-1])) == own


async def test_the_username_a_device_sends_does_not_matter(broker: FleetBroker, connect: Connect) -> None:
    # use_identity_as_username: the CN wins over whatever the client claims to be.
    watcher = await connect(broker.publisher, subscribe=(f"{T.prefix}/#",))
    device = await connect(broker.devices["dev-a"], username=pki.publisher_cn("main"))
    await device.publish(T.deployment("evil"), b"forged")
    await device.publish(T.reported("dev-a"), b"{}")
    assert topics(await received_until(watcher, T.reported("dev-a"))) == [T.reported("dev-a")]


async def test_a_device_reads_only_what_is_addressed_to_it(broker: FleetBroker, connect: Connect) -> None:
    # Mosquitto grants the wildcard subscription but filters every delivery through the ACL.
    device = await connect(broker.devices["dev-a"], subscribe=("#",))
    publisher = await connect(broker.publisher)
    for topic in (
        T.desired("dev-b"),
        T.keys("dev-b", "web"),
        T.method_request("dev-b", "ping", "r1"),
        T.reported("dev-b"),
        T.status("dev-b"),
        f"{T.prefix}/publisher/sync/x",
    ):
        await publisher.publish(topic, b"not for dev-a")
    mine = [
        T.desired("dev-a"),
        T.keys("dev-a", "web"),
        T.method_request("dev-a", "ping", "r2"),
        T.deployment("web"),
    ]
    for topic in mine:
        await publisher.publish(topic, b"for dev-a")
    assert topics(await received_until(device, mine[-1])) == mine


async def test_the_publisher_sends_deployments_and_method_requests(
    broker: FleetBroker, connect: Connect
) -> None:
    device = await connect(broker.devices["dev-b"], subscribe=(T.all_deployments, T.method_requests("dev-b")))
    publisher = await connect(broker.publisher)
    await publisher.publish(T.deployment("web"), b'{"name": "web"}')
    await publisher.publish(T.method_request("dev-b", "ping", "r1"), b'{"payload": {}}')
    got = await received_until(device, T.method_request("dev-b", "ping", "r1"))
    assert [(m.topic, m.payload) for m in got] == [
        (T.deployment("web"), b'{"name": "web"}'),
        (T.method_request("dev-b", "ping", "r1"), b'{"payload": {}}'),
    ]


def _cut_without_disconnect(broker: FleetBroker, who: Identity, will_topic: str) -> None:
    """Connect with a last will, then drop the TCP connection without an MQTT DISCONNECT, as a
    crashed agent would: the broker then publishes the will, if the ACL lets this identity."""
    kwargs: dict[str, object] = {"client_id": f"t-{uuid.uuid4().hex[:10]}", "protocol": mqtt.MQTTv311}
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
    client = mqtt.Client(**kwargs)  # type: ignore[arg-type]
    context = ssl.create_default_context(cafile=str(who.ca))
    context.load_cert_chain(str(who.cert), str(who.key))
    client.tls_set_context(context)
    client.will_set(will_topic, b'{"online": false}', qos=1)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", broker.service.port)
    client.loop_start()
    try:
        assert connected.wait(GUARD_S)
    finally:
        client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()


async def test_a_device_cannot_leave_a_last_will_for_another_device(
    broker: FleetBroker, connect: Connect
) -> None:
    # Mosquitto 2.0 accepts the CONNECT and checks the will's topic when it would publish it.
    watcher = await connect(broker.publisher, subscribe=(T.all_status,))
    dev_a = broker.devices["dev-a"]
    await asyncio.to_thread(_cut_without_disconnect, broker, dev_a, T.status("dev-b"))
    await asyncio.sleep(0.2)  # two separate connections: let the broker handle the first cut first
    await asyncio.to_thread(_cut_without_disconnect, broker, dev_a, T.status("dev-a"))
    assert topics(await received_until(watcher, T.status("dev-a"))) == [T.status("dev-a")]


@pytest.mark.parametrize(
    ("who", "alert"),
    [("anonymous", "certificate required"), ("other CA", "unknown ca"), ("revoked", "certificate revoked")],
)
async def test_only_current_certificates_of_the_fleet_ca_connect(
    broker: FleetBroker, connect: Connect, who: str, alert: str
) -> None:
    identity = {"anonymous": None, "other CA": broker.stranger, "revoked": broker.revoked}[who]
    # TLS 1.3 checks the client's certificate after the client's side of the handshake is done:
    # the broker's alert can then race the client's CONNECT, and a reset may drop it from the
    # client's buffer (an EOF instead). Every attempt must be refused; the alert must show.
    messages = []
    for _ in range(3):
        with pytest.raises(MqttConnectError) as refused:
            await connect(identity, connect_timeout=2.0)
        messages.append(str(refused.value))
        if alert in messages[-1]:
            break
    assert alert in messages[-1], messages  # the broker's TLS alert, not a timeout


async def test_a_payload_over_the_limit_is_dropped_and_the_connection_kept(
    broker: FleetBroker, connect: Connect
) -> None:
    watcher = await connect(broker.publisher, subscribe=(T.reported("dev-a"), T.telemetry("dev-a")))
    device = await connect(broker.devices["dev-a"])
    await device.publish(T.reported("dev-a"), b"x" * DEFAULT_MAX_PAYLOAD)  # at the limit: delivered
    await device.publish(T.reported("dev-a"), b"x" * (DEFAULT_MAX_PAYLOAD + 1))  # over: dropped, acked
    await device.publish(T.telemetry("dev-a"), b"after")
    got = await received_until(watcher, T.telemetry("dev-a"))
    assert [(m.topic, len(m.payload)) for m in got] == [
        (T.reported("dev-a"), DEFAULT_MAX_PAYLOAD),
        (T.telemetry("dev-a"), 5),
    ]
    assert device.connected


async def test_a_packet_over_the_limit_ends_the_connection(broker: FleetBroker, connect: Connect) -> None:
    # Slow reconnects, so the test sees the cut before the transport heals it.
    device = await connect(broker.devices["dev-a"], reconnect_min_s=30.0, reconnect_max_s=30.0)
    await device.publish(T.reported("dev-a"), b"x" * (DEFAULT_MAX_PAYLOAD + PACKET_HEADROOM + 1), qos=0)
    async with asyncio.timeout(GUARD_S):
        while device.connected:
            await asyncio.sleep(0.02)
    assert "oversize packet" in broker.log.read_text()


async def test_the_agent_settings_work_over_mtls(broker: FleetBroker, connect: Connect) -> None:
    """What an agent configures (mqtt_tls_*_file) is enough to get a retained deployment."""
    publisher = await connect(broker.publisher)
    document = b'{"fleet": "plant", "name": "iris", "version": 3}'
    await publisher.publish(T.deployment("iris"), document, retain=True)
    dev_b = broker.devices["dev-b"]
    settings = MqttSettings(
        url=broker.service.url,
        client_id=f"modelfleet-agent-{FLEET}-dev-b",
        tls_ca_file=dev_b.ca,
        tls_cert_file=dev_b.cert,
        tls_key_file=dev_b.key,
    )
    agent = MqttTransport(settings, will=(T.status("dev-b"), b'{"online": false}', True))
    agent.subscribe(T.all_deployments)
    try:
        await agent.start(connect_timeout=GUARD_S)
        got = await received_until(agent, T.deployment("iris"), retained=True)
        assert got[-1].payload == document and got[-1].retain
    finally:
        await agent.stop()
        await publisher.publish(T.deployment("iris"), b"", retain=True)


async def test_the_publisher_connects_over_mtls_with_its_workspace_settings(
    broker: FleetBroker, tmp_path: Path
) -> None:
    """`modelfleet.toml`'s mqtt_tls_*_file settings (here from the environment) reach the
    publisher's connection: it connects, subscribes and syncs with the broker over mTLS."""
    from publisher import FleetConnection, Workspace

    Workspace.create(tmp_path, hub=broker.service.url, fleet=FLEET)
    workspace = Workspace.load(
        tmp_path / "modelfleet.toml",
        environ={
            "MODELFLEET_MQTT_TLS_CA_FILE": str(broker.publisher.ca),
            "MODELFLEET_MQTT_TLS_CERT_FILE": str(broker.publisher.cert),
            "MODELFLEET_MQTT_TLS_KEY_FILE": str(broker.publisher.key),
        },
    )
    async with FleetConnection(workspace, connect_timeout=GUARD_S) as hub:
        await hub.sync()
        assert hub.snapshot is not None
