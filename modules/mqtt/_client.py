"""The MQTT transport the agent and the publisher both speak: paho-mqtt driven by the asyncio
event loop, without a thread.

Why this shape:

- An agent may run beside `azure-iot-device` 2.14, which pins paho-mqtt < 2, and the simulator runs
  thousands of agents in one process. So this is plain paho (1.6 or 2.x), driven through its
  external-loop hooks (`on_socket_open/close`, `on_socket_register/unregister_write`) with
  `loop.add_reader/add_writer` calling `loop_read()/loop_write()` and one periodic `loop_misc()`
  task, as in paho's asyncio example: no thread per connection, no `loop_start()`.
- paho's own connect is blocking (DNS, TCP, TLS handshake): on a device with a flaky uplink that
  would freeze the whole agent for seconds on every reconnect attempt. The TCP connect and the TLS
  handshake are therefore done here, non-blocking, and the connected socket is handed to paho's
  `reconnect()` by overriding `_create_socket_connection` (present, with the same contract, in 1.6
  and 2.x). paho never sees the TLS settings; it reads and writes an already wrapped socket.
- Callback signatures differ between paho 1.6 and 2.x (`CallbackAPIVersion.VERSION2`); the `_on_*`
  methods below accept both shapes.
- The caller sees one connection that heals itself: subscriptions are remembered and renewed, and
  `on_connect` callbacks re-run after every reconnect, so state is re-reported to a broker that may
  have restarted without persistence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from pydantic import BaseModel, SecretStr, field_validator, model_validator

from modules.mqtt._guard import MARKER, GuardedSocket
from modules.tasks import cancel_and_wait
from modules.transport import Message, TransportConnectError, TransportError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# How long one connect attempt (TCP, TLS, CONNACK, SUBACK) may first take before it is abandoned
# (`MqttSettings.attempt_timeout_s`). An attempt that times out doubles the allowance for the
# next one, up to `ATTEMPT_TIMEOUT_MAX_S`, and a connection that succeeds keeps it: so the timeout
# follows a slow link (a satellite or a congested cellular uplink, seconds each way) instead of
# cutting every attempt short for ever.
ATTEMPT_TIMEOUT_S = 10.0
ATTEMPT_TIMEOUT_MAX_S = 120.0
# How long `stop()` waits for the DISCONNECT to be written before it closes the socket anyway.
STOP_TIMEOUT_S = 5.0
# paho's keepalive and retry bookkeeping runs on this period.
MISC_PERIOD_S = 1.0
# What a PUBLISH body may hold beyond the payload cap: topic (up to 64 KiB in MQTT) and packet id.
_TOPIC_ROOM = 65535 + 2 + 2


def _pending(sock: Any) -> int:
    if isinstance(sock, GuardedSocket):
        return sock.pending()
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


class MqttError(TransportError):
    """Anything the MQTT transport could not do."""


class MqttConnectError(MqttError, TransportConnectError):
    """The first connection could not be made: broker unreachable, TLS failure, or refused CONNACK."""


class MqttNotConnectedError(MqttError):
    """The broker was not reachable for as long as the caller was willing to wait."""


class MqttSettings(BaseModel):
    """Where and how the agent reaches its broker; validated once, at configuration time."""

    url: str  # mqtt://host:port or mqtts://host:port (TLS)
    client_id: str
    username: str | None = None
    password: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False  # as paho's tls_insecure_set: skip the host name check, keep the chain check
    keepalive_s: int = 30
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"MQTT URL has no host: {value!r}")
        _ = parts.port  # raises ValueError for a port that is not a number or out of range
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> MqttSettings:
        if not self.tls and (
            self.tls_ca_file or self.tls_cert_file or self.tls_key_file or self.tls_insecure
        ):
            raise ValueError("TLS settings given for a plain mqtt:// URL; use mqtts://")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        if self.keepalive_s < 5:
            raise ValueError("keepalive_s must be at least 5")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for mqtts://, None for mqtt://."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca_file) if self.tls_ca_file else None
        )
        if self.tls_cert_file:
            ctx.load_cert_chain(
                str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None
            )
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


class _PahoClient(mqtt.Client):
    """paho's client, fed a socket that the transport connected without blocking the event loop."""

    _modelfleet_sock: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:  # type: ignore[override]
        sock, self._modelfleet_sock = self._modelfleet_sock, None
        if sock is None:  # only reachable if paho calls it outside `MqttTransport._connect_once`
            raise ConnectionError("no socket prepared by MqttTransport")
        return sock


class _ConnectFailed(Exception):
    """One connection attempt failed in a way worth retrying (the message is the one-line reason)."""


class _Refused(Exception):
    """The broker refused us (CONNACK refusal) or we refused it (TLS certificate): a configuration
    problem that retrying with the same settings will not fix. The message is the whole sentence."""


def _describe(exc: BaseException) -> str:
    """A one-line reason for logs and errors; never a traceback."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own text ("Connect call failed (...)") hides the cause
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class MqttTransport:
    """One self-healing MQTT connection for the agent, driven by the running asyncio loop."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        will: tuple[str, bytes, bool] | None = None,
        queue_size: int = 10000,
        max_payload_bytes: int | None = None,
    ) -> None:
        """`max_payload_bytes`: a PUBLISH above it (plus room for its topic) is dropped unread,
        on the wire, and delivered as a `Message` with `oversized` set and no payload."""
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._settings = settings
        self._will = will
        self._queue_size = queue_size
        self._attempt_timeout = settings.attempt_timeout_s
        self._max_body = None if max_payload_bytes is None else max_payload_bytes + _TOPIC_ROOM
        self._where = f"{settings.host}:{settings.port}"
        self._subscriptions: dict[str, int] = {}
        self._on_connect: list[Callable[[], Awaitable[None]]] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _PahoClient | None = None
        self._ssl_context = settings.ssl_context()
        self._started = False
        self._stopping = False  # no new connection, publish or message from here on
        self._stop_called = False
        self._closing = asyncio.Event()  # set with `_stopping`, to wake whoever waits for a connection
        self._stopped = asyncio.Event()  # loop-agnostic in 3.10+: binds on first wait

        # The socket paho owns now, and a future resolved (with the reason) when it closes.
        self._sock: socket.socket | None = None
        # Inside our own calls into paho (publish, reading): a packet paho queues is noted and
        # sent when the call returns, straight away; the writer is registered only when the
        # socket would block. Registering it for every publish cost two epoll calls and a loop
        # iteration per message, which is most of a large simulated fleet's MQTT time.
        self._write_deferred = 0
        self._write_noted = False
        self._lost: asyncio.Future[str] | None = None
        self._last_error: str | None = None
        self._disconnect_reason: str | None = None

        self._session_up = False  # CONNACK accepted on the current socket
        self._ready = asyncio.Event()  # CONNACK accepted and subscriptions acknowledged
        self._connack: asyncio.Future[str | None] | None = None
        # SUBSCRIBE packets in flight: their topics, and a future for the one `_connect_once` awaits.
        self._subacks: dict[int, tuple[list[str], asyncio.Future[list[str]] | None]] = {}
        self._pubacks: dict[int, asyncio.Future[None]] = {}

        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._consuming = False
        self._paused = False

        self._misc_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._callbacks_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """True while connected with every subscription acknowledged."""
        return self._ready.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected, `timeout` seconds pass, or `stop()` begins; tell whether connected."""
        if self._ready.is_set() or self._stopping:
            return self._ready.is_set()
        ready = asyncio.ensure_future(self._ready.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({ready, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closing.cancel()
        return self._ready.is_set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Remember a subscription; it is made now if connected, and again after every reconnect."""
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        self._subscriptions[topic_filter] = qos
        if self._session_up and self._client is not None:
            result, mid = self._client.subscribe(topic_filter, qos)
            if result == mqtt.MQTT_ERR_SUCCESS:
                self._subacks[mid] = ([topic_filter], None)

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after every successful (re)connect and resubscribe, e.g. to re-report state.

        Callbacks run one after another in a task of their own (so they may publish); if the
        connection is replaced while they run, the unfinished round is cancelled and a new one starts.
        """
        self._on_connect.append(callback)

    async def start(self, connect_timeout: float = 10.0) -> None:
        """Connect, subscribe, and keep the connection up in the background until `stop()`.

        Unreachable brokers are retried until `connect_timeout`; a refused CONNACK (bad credentials,
        client id rejected) fails at once, since retrying cannot fix configuration.
        """
        if self._started or self._stop_called:
            raise MqttError(
                "an MqttTransport starts once (again only after a failed start); make a new one after stop()"
            )
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._client = self._build_client()
        self._misc_task = self._loop.create_task(self._misc_loop(), name="mqtt-misc")
        deadline = self._loop.time() + connect_timeout
        attempt = 0
        reason: str | None = None
        try:
            while True:
                remaining = deadline - self._loop.time()
                try:
                    async with asyncio.timeout(min(remaining, self._attempt_timeout)):
                        await self._connect_once()
                    break
                except _Refused as exc:
                    raise MqttConnectError(str(exc)) from None
                except (OSError, ssl.SSLError, _ConnectFailed) as exc:
                    if isinstance(exc, TimeoutError):
                        self._slower_link()
                    # An attempt cut short by the deadline says less than the failure before it.
                    if reason is None or not isinstance(exc, TimeoutError):
                        reason = _describe(exc)
                delay = min(self._backoff(attempt), deadline - self._loop.time())
                if delay <= 0:
                    raise MqttConnectError(
                        f"cannot connect to MQTT broker {self._where} within {connect_timeout:g} s: {reason}"
                    )
                log.info("MQTT connect to %s failed (%s); retrying in %.2f s", self._where, reason, delay)
                await asyncio.sleep(delay)
                attempt += 1
        except MqttConnectError:
            # Not a stop: the caller may try again later (a daemon whose broker is not up yet),
            # and whoever consumes messages() keeps waiting for the connection that will come.
            await self._reset_after_failed_start()
            raise
        except BaseException:
            await self._teardown()
            raise
        log.info("MQTT connected to %s as %s", self._where, self._settings.client_id)
        self._run_on_connect_callbacks()
        self._supervisor = self._loop.create_task(self._supervise(), name="mqtt-supervisor")

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish; for qos >= 1 return once the broker acknowledged it.

        While disconnected, wait up to `timeout` for the reconnect rather than handing the message
        to paho's offline queue, so that a caller who got an error knows the message was not sent.
        A message already handed over when the connection drops is resent by paho after the
        reconnect (at least once); if its PUBACK does not come within `timeout` an error is raised,
        though the broker may still get it later.
        """
        loop = self._require_started()
        deadline = loop.time() + timeout
        while True:
            if not self._ready.is_set():
                await self.wait_connected(max(0.0, deadline - loop.time()))
            if self._stopping:
                raise MqttNotConnectedError(f"cannot publish to {topic}: the MQTT transport is stopped")
            if not self._ready.is_set():
                raise MqttNotConnectedError(
                    f"cannot publish to {topic}: not connected to MQTT broker {self._where} "
                    f"within {timeout:g} s"
                )
            assert self._client is not None
            self._write_deferred += 1
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
            finally:
                self._write_deferred -= 1
            self._send_noted()
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                continue  # the connection dropped between the ready check and now: wait again
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise MqttError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
            break
        if qos == 0:
            return
        mid = info.mid
        ack: asyncio.Future[None] = loop.create_future()
        self._pubacks[mid] = ack
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await ack
        except TimeoutError:
            cls = MqttError if self.connected else MqttNotConnectedError
            raise cls(f"no acknowledgement from {self._where} for {topic} within {timeout:g} s") from None
        finally:
            if self._pubacks.get(mid) is ack:
                del self._pubacks[mid]

    async def messages(self) -> AsyncIterator[Message]:
        """Every message of every subscription, in arrival order, until `stop()`.

        One consumer only. The buffer is bounded by `queue_size`: when it is full the transport
        stops reading the socket (back-pressure, so nothing is dropped) until the consumer catches
        up. Publishing with qos >= 1 waits meanwhile, since PUBACKs are not read either.
        """
        if self._consuming:
            raise MqttError("MqttTransport.messages() already has a consumer")
        self._consuming = True
        try:
            while True:
                while self._inbox:
                    message = self._inbox.popleft()
                    if self._paused and len(self._inbox) <= self._queue_size // 2:
                        self._resume_reading()
                    yield message
                if self._stopping:
                    return
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
        finally:
            self._consuming = False

    async def stop(self) -> None:
        """Disconnect cleanly (the broker discards the will), end every owned task, close the socket."""
        if self._stop_called:
            await self._stopped.wait()
            return
        self._stop_called = True
        self._stopping = True
        self._closing.set()
        try:
            await self._cancel(self._supervisor)
            await self._cancel(self._callbacks_task)
            if self._client is not None and self._session_up and self._lost is not None:
                lost = self._lost
                self._client.disconnect()  # paho writes DISCONNECT, then closes the socket itself
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await asyncio.shield(lost)
            await self._teardown()
            if self._started:
                log.info("MQTT disconnected from %s", self._where)
        finally:
            self._stopped.set()

    # ---------------------------------------------------------------- connection lifecycle

    def _build_client(self) -> _PahoClient:
        settings = self._settings
        kwargs: dict[str, Any] = {
            "client_id": settings.client_id,
            "clean_session": True,
            "protocol": mqtt.MQTTv311,
        }
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho >= 2.0
            kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
        client = _PahoClient(**kwargs)
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if self._will is not None:
            topic, payload, retain = self._will
            client.will_set(topic, payload, qos=1, retain=retain)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_suback
        client.on_publish = self._on_puback
        client.on_message = self._on_message
        client.on_log = self._on_log
        # Stores host, port and keepalive only; no I/O (that is `_connect_once`).
        client.connect_async(settings.host, settings.port, settings.keepalive_s)
        return client

    async def _connect_once(self) -> None:
        """One attempt: socket, CONNECT/CONNACK, SUBSCRIBE/SUBACK; then the transport is ready."""
        assert self._client is not None and self._loop is not None
        sock: Any = await self._open_socket()
        if self._max_body is not None:
            sock = GuardedSocket(sock, self._max_body)
        self._last_error = None
        self._disconnect_reason = None
        self._connack = connack = self._loop.create_future()
        self._client._modelfleet_sock = sock
        try:
            self._client.reconnect()  # paho takes the socket, calls _on_socket_open, queues CONNECT
        except BaseException:
            self._client._modelfleet_sock = None
            sock.close()
            raise
        lost = self._lost
        assert lost is not None
        try:
            refusal = await self._until(connack, lost, "CONNACK")
            if refusal is not None:
                raise _Refused(f"MQTT broker {self._where} refused the connection: {refusal}")
            if self._subscriptions:
                topics = list(self._subscriptions.items())
                result, mid = self._client.subscribe(topics)
                if result != mqtt.MQTT_ERR_SUCCESS:
                    raise _ConnectFailed(f"cannot subscribe: {mqtt.error_string(result)}")
                suback: asyncio.Future[list[str]] = self._loop.create_future()
                self._subacks[mid] = ([topic for topic, _ in topics], suback)
                await self._until(suback, lost, "SUBACK")
        except BaseException:
            self._abort_socket()
            raise
        finally:
            self._connack = None
        self._ready.set()

    async def _until(self, fut: asyncio.Future[Any], lost: asyncio.Future[str], what: str) -> Any:
        """`fut`'s result, unless the connection closes first."""
        await asyncio.wait({fut, lost}, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        raise _ConnectFailed(f"connection closed before {what}: {lost.result()}")

    async def _open_socket(self) -> socket.socket:
        """A connected (and, for mqtts://, TLS-handshaken) non-blocking socket."""
        assert self._loop is not None
        host, port = self._settings.host, self._settings.port
        try:
            ipaddress.ip_address(host)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except ValueError:  # a name: resolved in asyncio's shared executor, not a thread of ours
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _ConnectFailed(f"cannot resolve {host}: {exc}") from None
        error: OSError = OSError(f"no address for {host}")
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await self._loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            if self._ssl_context is None:
                return sock
            return await self._tls_handshake(sock)
        raise error

    async def _tls_handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        assert self._loop is not None and self._ssl_context is not None
        tls = self._ssl_context.wrap_socket(
            sock, server_hostname=self._settings.host, do_handshake_on_connect=False
        )
        try:
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    await self._fd_ready(tls, write=False)
                except ssl.SSLWantWriteError:
                    await self._fd_ready(tls, write=True)
        except ssl.SSLCertVerificationError as exc:
            tls.close()
            raise _Refused(
                f"MQTT broker {self._where} is not trusted: TLS certificate rejected: {exc.verify_message}"
            ) from None
        except BaseException:
            tls.close()
            raise

    async def _fd_ready(self, sock: socket.socket, *, write: bool) -> None:
        assert self._loop is not None
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = sock.fileno()
        (self._loop.add_writer if write else self._loop.add_reader)(fd, wake)
        try:
            await ready
        finally:
            (self._loop.remove_writer if write else self._loop.remove_reader)(fd)

    def _abort_socket(self) -> None:
        """Cut the current connection without DISCONNECT; paho notices at its next read and cleans up."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then reconnect with exponential backoff and jitter."""
        assert self._loop is not None
        while True:
            lost = self._lost
            assert lost is not None
            reason = await asyncio.shield(lost)
            attempt = 0
            delay = self._backoff(attempt)
            log.warning("MQTT connection to %s lost (%s); reconnecting in %.2f s", self._where, reason, delay)
            while True:
                await asyncio.sleep(delay)
                try:
                    async with asyncio.timeout(self._attempt_timeout):
                        await self._connect_once()
                    break
                except _Refused as exc:
                    reason = str(exc)
                except (OSError, ssl.SSLError, _ConnectFailed) as exc:
                    if isinstance(exc, TimeoutError):
                        self._slower_link()
                    reason = _describe(exc)
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "MQTT reconnect to %s failed (%s); next attempt in %.2f s", self._where, reason, delay
                )
            log.info("MQTT reconnected to %s after %d attempt(s)", self._where, attempt + 1)
            self._run_on_connect_callbacks()

    def _slower_link(self) -> None:
        longer = min(ATTEMPT_TIMEOUT_MAX_S, self._attempt_timeout * 2)
        if longer > self._attempt_timeout:
            log.info("MQTT connect attempts to %s now get %.0f s (a slow link)", self._where, longer)
        self._attempt_timeout = longer

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': never below half the step, so retries spread out."""
        step = min(self._settings.reconnect_max_s, self._settings.reconnect_min_s * 2 ** min(attempt, 30))
        return step / 2 + random.uniform(0, step / 2)

    def _run_on_connect_callbacks(self) -> None:
        assert self._loop is not None
        if self._callbacks_task is not None and not self._callbacks_task.done():
            self._callbacks_task.cancel()
        if self._on_connect:
            self._callbacks_task = self._loop.create_task(self._call_on_connect(), name="mqtt-on-connect")

    async def _call_on_connect(self) -> None:
        for callback in list(self._on_connect):
            try:
                await callback()
            except MqttError as exc:  # typically the connection dropped again meanwhile
                log.warning("MQTT on_connect callback %r failed: %s", callback, exc)
            except Exception:
                log.exception("MQTT on_connect callback %r failed", callback)

    async def _misc_loop(self) -> None:
        """paho's timers: PINGREQ when idle, and dropping a connection whose PINGRESP never came."""
        while True:
            await asyncio.sleep(MISC_PERIOD_S)
            if self._client is not None and self._sock is not None:
                self._client.loop_misc()

    async def _reset_after_failed_start(self) -> None:
        for task in (self._supervisor, self._callbacks_task, self._misc_task):
            await self._cancel(task)
        self._supervisor = self._callbacks_task = self._misc_task = None
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._forget_socket(sock)
            sock.close()
        self._ready.clear()
        self._session_up = False
        self._client = None
        self._started = False

    async def _teardown(self) -> None:
        """Cancel every owned task and close whatever socket is left; used by stop() and a failed start()."""
        self._stopping = True
        self._closing.set()
        for task in (self._supervisor, self._callbacks_task, self._misc_task):
            await self._cancel(task)
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._forget_socket(sock)
            sock.close()
        self._ready.clear()
        self._session_up = False
        for ack in self._pubacks.values():
            if not ack.done():
                ack.set_exception(MqttNotConnectedError("the MQTT transport was stopped"))
                ack.exception()  # the publisher may be gone; do not warn about it
        self._inbox_ready.set()  # let the consumer see the end

    @staticmethod
    async def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            await cancel_and_wait(task)

    def _require_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._client is None:
            raise MqttError("MqttTransport.start() has not been called")
        return self._loop

    # ---------------------------------------------------------------- paho socket hooks

    def _on_socket_open(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        self._sock = sock
        self._lost = self._loop.create_future()
        self._paused = False  # a new connection must read its CONNACK whatever the consumer does
        self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        self._forget_socket(sock)
        if sock is not self._sock:
            return
        self._sock = None
        self._session_up = False
        self._ready.clear()
        lost = self._lost
        if lost is not None and self._loop is not None:
            # paho reports the reason (on_disconnect) right after closing: read it on the next tick.
            self._loop.call_soon(self._resolve_lost, lost)

    def _resolve_lost(self, lost: asyncio.Future[str]) -> None:
        reason = self._disconnect_reason or "connection closed"
        if self._last_error:  # paho's own words, e.g. "failed to receive on socket: [Errno 104] ..."
            reason = f"{reason}: {self._last_error}"
        if not lost.done():
            lost.set_result(reason)

    def _forget_socket(self, sock: socket.socket) -> None:
        if self._loop is None or sock.fileno() < 0:
            return
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        if self._write_deferred:
            self._write_noted = True
        elif self._loop is not None:
            self._loop.add_writer(sock, self._on_writable)

    def _send_noted(self) -> None:
        """Write what paho queued during our call now; wait for the socket only if it is full."""
        if not self._write_noted or self._write_deferred:
            return
        self._write_noted = False
        client, sock = self._client, self._sock
        if client is None or sock is None or self._loop is None:
            return
        client.loop_write()
        # paho thinks the writer is registered (it asked): when bytes are left, register it for real
        if self._sock is sock and sock.fileno() >= 0 and client.want_write():
            self._loop.add_writer(sock, self._on_writable)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _on_readable(self) -> None:
        client, sock = self._client, self._sock
        if client is None or sock is None:
            return
        self._write_deferred += 1  # the acknowledgements this read owes go out in one write after it
        try:
            client.loop_read()
            # Decrypted TLS bytes already inside the SSL object (or read ahead by the payload guard)
            # do not make the fd readable again.
            while self._sock is sock and not self._paused and _pending(sock):
                client.loop_read()
        finally:
            self._write_deferred -= 1
        self._send_noted()

    def _on_writable(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _pause_reading(self) -> None:
        if not self._paused and self._sock is not None and self._loop is not None:
            self._paused = True
            self._loop.remove_reader(self._sock)
            log.warning(
                "MQTT consumer is %d messages behind; not reading from %s until it catches up",
                len(self._inbox),
                self._where,
            )

    def _resume_reading(self) -> None:
        self._paused = False
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock, self._on_readable)
            if _pending(self._sock):  # bytes already read off the fd wait in a buffer of ours
                self._loop.call_soon(self._on_readable)

    # ---------------------------------------------------------------- paho protocol callbacks
    # Each accepts the paho 1.6 signature and the paho 2.x VERSION2 one, and never raises into paho.

    def _on_connack(self, client: Any, userdata: Any, flags: Any, rc: Any, properties: Any = None) -> None:
        if isinstance(rc, int):  # paho 1.6, MQTT 3.1.1: the CONNACK return code
            refusal = None if rc == 0 else mqtt.connack_string(rc).removeprefix("Connection Refused: ")
        else:  # paho 2.x: a ReasonCode
            refusal = str(rc) if rc.value >= 0x80 else None
        if refusal is None:
            self._session_up = True
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(refusal)

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        if len(args) == 1:  # paho 1.6: (rc)
            rc = args[0]
            if rc == mqtt.MQTT_ERR_KEEPALIVE:
                reason = "keepalive timeout: no answer to PINGREQ"
            elif rc == mqtt.MQTT_ERR_CONN_LOST:
                reason = "closed by the broker or the network"
            else:
                reason = mqtt.error_string(rc)
        else:  # paho 2.x: (disconnect_flags, reason_code, properties)
            flags, code = args[0], args[1]
            if getattr(flags, "is_disconnect_packet_from_server", False):
                reason = f"broker sent DISCONNECT ({code})"
            elif str(code) == "Keep alive timeout":
                reason = "keepalive timeout: no answer to PINGREQ"
            else:
                reason = "closed by the broker or the network"
        self._disconnect_reason = reason

    def _on_suback(self, client: Any, userdata: Any, mid: int, granted: Any, properties: Any = None) -> None:
        topics, ack = self._subacks.pop(mid, ([], None))
        failed = [
            topic
            for topic, code in zip(topics, granted, strict=False)
            if (code if isinstance(code, int) else code.value) >= 0x80  # 1.6: int, 2.x: ReasonCode
        ]
        if failed:  # e.g. an ACL forbids it; the rest of the connection is still useful
            log.warning("MQTT broker %s refused the subscription to %s", self._where, ", ".join(failed))
        if ack is not None and not ack.done():
            ack.set_result(failed)

    def _on_puback(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        ack = self._pubacks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(None)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT message with a topic that is not UTF-8 dropped")
            return
        payload = bytes(msg.payload)
        oversized = None
        if self._max_body is not None and payload.startswith(MARKER):
            oversized = int(payload[len(MARKER) :] or 0)
            payload = b""
        self._inbox.append(Message(topic, payload, bool(msg.retain), oversized))
        self._inbox_ready.set()
        if len(self._inbox) >= self._queue_size and self._ready.is_set():
            self._pause_reading()

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = buf
            log.debug("paho: %s", buf)
