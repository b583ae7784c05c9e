"""The agent's MQTT transport against a real Mosquitto: delivery, retained state, last will,
broker restarts, credentials, TLS, and the promise of no thread per connection.

Waits carry generous hang guards (`GUARD_S`) so a bug fails the test instead of hanging it; no
assertion depends on how fast anything is.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from modules.mqtt import (
    Message,
    MqttConnectError,
    MqttNotConnectedError,
    MqttSettings,
    MqttTransport,
)
from tests._services import Service, free_port, run_mosquitto_at

GUARD_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]

TransportFactory = Callable[..., MqttTransport]


def unique(prefix: str) -> str:
    """A topic root of its own, so tests sharing the session broker never see each other's traffic."""
    return f"test/{prefix}/{uuid.uuid4().hex[:8]}"


def settings(url: str, **overrides: object) -> MqttSettings:
    values: dict[str, object] = {
        "url": url,
        "client_id": f"t-{uuid.uuid4().hex[:10]}",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return MqttSettings.model_validate(values)


@pytest.fixture
async def transports() -> AsyncIterator[TransportFactory]:
    """Make transports that are stopped when the test ends, whatever happened in it."""
    made: list[MqttTransport] = []

    def make(url: str, *, will: tuple[str, bytes, bool] | None = None, queue_size: int = 10000, **kw: object):
        transport = MqttTransport(settings(url, **kw), will=will, queue_size=queue_size)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.stop()


async def receive(messages: AsyncIterator[Message], count: int = 1) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(GUARD_S):
        while len(got) < count:
            got.append(await anext(messages))
    return got


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_S):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def broker_root(tmp_path: Path) -> Path:
    return tmp_path / "mosquitto"


# ------------------------------------------------------------------ delivery


async def test_published_message_reaches_a_subscriber(mosquitto: Service, transports: TransportFactory):
    root = unique("roundtrip")
    receiver = transports(mosquitto.url)
    receiver.subscribe(f"{root}/#")
    sender = transports(mosquitto.url)
    await receiver.start()
    await sender.start()
    messages = receiver.messages()

    await sender.publish(f"{root}/a", b"hello", qos=1)
    await sender.publish(f"{root}/b", b"\x00\xffbinary", qos=0)

    assert await receive(messages, 2) == [
        Message(f"{root}/a", b"hello", False),
        Message(f"{root}/b", b"\x00\xffbinary", False),
    ]


async def test_subscription_made_after_start_is_active(mosquitto: Service, transports: TransportFactory):
    root = unique("late-sub")
    transport = transports(mosquitto.url)
    await transport.start()
    transport.subscribe(f"{root}/+")
    # Same connection: the broker handles the SUBSCRIBE before this PUBLISH.
    await transport.publish(f"{root}/x", b"1")
    assert await receive(transport.messages()) == [Message(f"{root}/x", b"1", False)]


async def test_retained_message_reaches_a_later_subscriber(mosquitto: Service, transports: TransportFactory):
    root = unique("retained")
    publisher = transports(mosquitto.url)
    await publisher.start()
    await publisher.publish(f"{root}/state", b'{"v": 1}', retain=True)

    late = transports(mosquitto.url)
    late.subscribe(f"{root}/#")
    await late.start()

    assert await receive(late.messages()) == [Message(f"{root}/state", b'{"v": 1}', True)]


async def test_empty_retained_payload_deletes_the_retained_message(
    mosquitto: Service, transports: TransportFactory
):
    root = unique("delete")
    publisher = transports(mosquitto.url)
    await publisher.start()
    await publisher.publish(f"{root}/deployment", b"doc", retain=True)
    await publisher.publish(f"{root}/deployment", b"", retain=True)

    late = transports(mosquitto.url)
    late.subscribe(f"{root}/#")
    await late.start()
    # Retained messages are queued when the broker handles SUBSCRIBE, before this later PUBLISH.
    await late.publish(f"{root}/marker", b"m")

    assert await receive(late.messages()) == [Message(f"{root}/marker", b"m", False)]


async def test_burst_of_500_messages_arrives_complete_and_in_order(
    mosquitto: Service, transports: TransportFactory
):
    root = unique("burst")
    receiver = transports(mosquitto.url)
    receiver.subscribe(f"{root}/#")
    await receiver.start()
    sender = transports(mosquitto.url)
    await sender.start()
    messages = receiver.messages()

    await asyncio.gather(*(sender.publish(f"{root}/n", str(i).encode()) for i in range(500)))

    got = await receive(messages, 500)
    assert [m.payload for m in got] == [str(i).encode() for i in range(500)]


async def test_slow_consumer_gets_every_message_when_the_queue_is_full(
    mosquitto: Service, transports: TransportFactory
):
    root = unique("backpressure")
    receiver = transports(mosquitto.url, queue_size=10)
    receiver.subscribe(f"{root}/#")
    await receiver.start()
    sender = transports(mosquitto.url)
    await sender.start()

    # Nobody consumes while these go out: the receiver must stop reading, not drop.
    for i in range(300):
        await sender.publish(f"{root}/n", str(i).encode())

    got = await receive(receiver.messages(), 300)
    assert [m.payload for m in got] == [str(i).encode() for i in range(300)]


async def test_no_thread_is_created(mosquitto: Service, transports: TransportFactory):
    root = unique("threads")
    before = threading.active_count()
    transport = transports(mosquitto.url)
    transport.subscribe(f"{root}/#")
    await transport.start()
    await transport.publish(f"{root}/x", b"1")
    await receive(transport.messages())
    during = threading.active_count()
    await transport.stop()

    assert during == before, [t.name for t in threading.enumerate()]
    assert threading.active_count() == before


async def test_stop_is_idempotent_ends_messages_and_owned_tasks(
    mosquitto: Service, transports: TransportFactory
):
    tasks_before = asyncio.all_tasks()
    transport = transports(mosquitto.url)
    await transport.start()
    messages = transport.messages()
    consumer = asyncio.create_task(anext(messages, None))
    await asyncio.sleep(0)

    await transport.stop()
    await transport.stop()

    async with asyncio.timeout(GUARD_S):
        assert await consumer is None
    assert not transport.connected
    assert asyncio.all_tasks() - tasks_before == set()
    with pytest.raises(MqttNotConnectedError):
        await transport.publish("test/after-stop", b"x")


# ------------------------------------------------------------------ last will


WILL_SCRIPT = """
import asyncio, sys
from modules.mqtt import MqttSettings, MqttTransport

async def main():
    url, topic = sys.argv[1], sys.argv[2]
    transport = MqttTransport(
        MqttSettings(url=url, client_id="will-victim", keepalive_s=60),
        will=(topic, b"offline", True),
    )
    await transport.start()
    await transport.publish(topic, b"online", retain=True)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_is_published_when_the_process_dies(
    mosquitto: Service, transports: TransportFactory, tmp_path: Path
):
    topic = f"{unique('will')}/status"
    observer = transports(mosquitto.url)
    observer.subscribe(topic)
    await observer.start()
    messages = observer.messages()

    script = tmp_path / "victim.py"
    script.write_text(WILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    victim = await asyncio.create_subprocess_exec(
        sys.executable, str(script), mosquitto.url, topic, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(GUARD_S):
            assert (await victim.stdout.readline()).strip() == b"ready"  # type: ignore[union-attr]
        assert await receive(messages) == [Message(topic, b"online", False)]
        victim.send_signal(signal.SIGKILL)  # the socket dies with the process: no DISCONNECT
        await victim.wait()

        assert await receive(messages) == [Message(topic, b"offline", False)]
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()


async def test_last_will_is_not_published_on_clean_stop(mosquitto: Service, transports: TransportFactory):
    topic = f"{unique('no-will')}/status"
    observer = transports(mosquitto.url)
    observer.subscribe(topic)
    await observer.start()
    messages = observer.messages()

    agent = transports(mosquitto.url, will=(topic, b"offline", False))
    await agent.start()
    await agent.stop()

    # The DISCONNECT was on the broker's side of the agent's socket before these markers were sent,
    # so a will (sent when the broker handles that socket) would arrive before the second marker.
    await observer.publish(topic, b"marker-1")
    assert await receive(messages) == [Message(topic, b"marker-1", False)]
    await observer.publish(topic, b"marker-2")
    assert await receive(messages) == [Message(topic, b"marker-2", False)]


# ------------------------------------------------------------------ broker restarts


async def test_reconnects_and_resubscribes_after_broker_restart(
    broker_root: Path, transports: TransportFactory, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="modules.mqtt._client")
    port = free_port()
    connects: list[int] = []
    connected_again = asyncio.Event()

    async def on_connect() -> None:
        connects.append(1)
        if len(connects) == 2:
            connected_again.set()

    with run_mosquitto_at(broker_root / "first", port) as broker:
        transport = transports(broker.url)
        transport.subscribe("restart/#")
        transport.on_connect(on_connect)
        await transport.start()
        messages = transport.messages()
        await until(lambda: len(connects) == 1)

    await until(lambda: not transport.connected)
    # Handed over while the broker is down: waits for the reconnect instead of failing.
    during = asyncio.create_task(transport.publish("restart/during", b"queued", timeout=GUARD_S))
    await asyncio.sleep(0.1)
    assert not during.done()

    with run_mosquitto_at(broker_root / "second", port) as broker:
        async with asyncio.timeout(GUARD_S):
            await during
            await connected_again.wait()
        assert transport.connected
        assert await receive(messages) == [Message("restart/during", b"queued", False)]

        other = transports(broker.url)
        await other.start()
        await other.publish("restart/after", b"fresh")
        assert await receive(messages) == [Message("restart/after", b"fresh", False)]

    assert len(connects) >= 2
    losses = [r for r in caplog.records if "lost" in r.getMessage()]
    assert losses and all(r.levelno == logging.WARNING for r in losses)
    assert any("reconnected" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info], "a dropped connection must not log a traceback"


async def test_publish_fails_when_the_broker_stays_down(broker_root: Path, transports: TransportFactory):
    with run_mosquitto_at(broker_root, free_port()) as broker:
        transport = transports(broker.url)
        await transport.start()
    await until(lambda: not transport.connected)

    with pytest.raises(MqttNotConnectedError, match="not connected"):
        await transport.publish("down/x", b"x", timeout=0.3)
    assert not await transport.wait_connected(0.05)

    # stop() does not leave a waiting publisher hanging until its own timeout.
    waiting = asyncio.create_task(transport.publish("down/y", b"y", timeout=3600))
    await asyncio.sleep(0.05)
    await transport.stop()
    async with asyncio.timeout(GUARD_S):
        with pytest.raises(MqttNotConnectedError, match="stopped"):
            await waiting


async def test_start_fails_with_a_reason_when_nothing_listens(transports: TransportFactory):
    transport = transports(f"mqtt://127.0.0.1:{free_port()}")
    threads = threading.active_count()
    with pytest.raises(MqttConnectError, match=r"cannot connect .* refused"):
        await transport.start(connect_timeout=0.5)
    assert threading.active_count() == threads


async def test_a_failed_start_can_be_retried_once_the_broker_is_up(
    transports: TransportFactory, broker_root: Path
):
    """A daemon started before its broker retries start(); messages() waits meanwhile."""
    port = free_port()
    transport = transports(f"mqtt://127.0.0.1:{port}")
    transport.subscribe("late/#")
    messages = transport.messages()
    with pytest.raises(MqttConnectError):
        await transport.start(connect_timeout=0.5)
    with run_mosquitto_at(broker_root, port):
        await transport.start(connect_timeout=10)
        await transport.publish("late/x", b"here")
        assert await receive(messages) == [Message("late/x", b"here", False)]


# ------------------------------------------------------------------ credentials and TLS


@pytest.fixture
def password_broker(broker_root: Path) -> Iterator[Service]:
    with run_mosquitto_at(broker_root, free_port(), users={"agent": "s3cret pass"}) as broker:
        yield broker


async def test_right_credentials_connect(password_broker: Service, transports: TransportFactory):
    transport = transports(password_broker.url, username="agent", password=SecretStr("s3cret pass"))
    transport.subscribe("auth/#")
    await transport.start()
    await transport.publish("auth/x", b"ok")
    assert await receive(transport.messages()) == [Message("auth/x", b"ok", False)]


@pytest.mark.parametrize(
    "credentials",
    [{"username": "agent", "password": SecretStr("wrong")}, {"username": "nobody"}, {}],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
async def test_refused_credentials_fail_start_at_once(
    password_broker: Service, transports: TransportFactory, credentials: dict[str, object]
):
    transport = transports(password_broker.url, **credentials)
    # A retry loop would run into the timeout and say "cannot connect ... within"; a refusal says so.
    with pytest.raises(MqttConnectError, match="refused the connection") as caught:
        await transport.start(connect_timeout=GUARD_S)
    message = str(caught.value).lower()
    assert "not authori" in message or "user name or password" in message
    assert "\n" not in str(caught.value)
    assert not transport.connected


def _write_tls_files(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name | None, key, signer, ca: bool) -> x509.Certificate:  # type: ignore[no-untyped-def]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("modelfleet test CA", None, ca_key, ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("127.0.0.1", ca_cert.subject, server_key, ca_key, False)
    paths = (root / "ca.pem", root / "server.pem", root / "server.key")
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_tls_connection_with_a_private_ca(broker_root: Path, transports: TransportFactory):
    ca, cert, key = _write_tls_files(broker_root / "tls")
    with run_mosquitto_at(broker_root, free_port(), tls=(ca, cert, key)) as broker:
        assert broker.url.startswith("mqtts://")
        transport = transports(broker.url, tls_ca_file=ca)
        transport.subscribe("tls/#")
        await transport.start()
        messages = transport.messages()
        await asyncio.gather(*(transport.publish("tls/n", str(i).encode() * 200) for i in range(50)))
        got = await receive(messages, 50)
        assert [m.payload for m in got] == [str(i).encode() * 200 for i in range(50)]


async def test_tls_refuses_a_server_it_does_not_trust(broker_root: Path, transports: TransportFactory):
    ca, cert, key = _write_tls_files(broker_root / "tls")
    other_ca, _, _ = _write_tls_files(broker_root / "other")
    with run_mosquitto_at(broker_root, free_port(), tls=(ca, cert, key)) as broker:
        transport = transports(broker.url, tls_ca_file=other_ca)
        with pytest.raises(MqttConnectError, match="certificate"):
            await transport.start(connect_timeout=0.5)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"url": "http://broker:1883"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://:1883"}, "no host"),
        ({"url": "mqtt://broker:1883", "tls_ca_file": "/ca.pem"}, "use mqtts://"),
        ({"url": "mqtts://broker", "tls_key_file": "/k.pem"}, "needs tls_cert_file"),
        ({"url": "mqtt://broker", "reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s"),
    ],
)
def test_settings_refuse_inconsistent_values(overrides: dict[str, object], error: str):
    with pytest.raises(ValidationError, match=error):
        MqttSettings.model_validate({"client_id": "c", **overrides})


def test_settings_default_ports_and_keep_the_password_secret():
    plain = MqttSettings(url="mqtt://broker.local", client_id="c", password=SecretStr("pw"))
    assert (plain.host, plain.port, plain.tls) == ("broker.local", 1883, False)
    assert "pw" not in repr(plain)
    secure = MqttSettings(url="mqtts://broker.local", client_id="c")
    assert (secure.port, secure.tls) == (8883, True)
