"""An in-process MQTT-like broker and the `Transport` that speaks to it.

Why it exists: a thousand agents against a real broker measure the broker and the sockets as
much as the agent; against this one, a test of targeting, rollout and faults runs in seconds with
no service to start. It keeps the semantics the agent and the publisher rely on, and nothing
else: retained messages (an empty payload clears one), delivery to every client with a matching
subscription (`+` and `#` wildcards, once per client however many of its filters match, the
retain flag set only on what a new subscription receives), a last will published when a client's
link drops without a clean disconnect, and self-healing clients that resubscribe and run their
on-connect callbacks after every reconnect.

Both the subscriptions and the retained messages are kept in topic trees, so a publish costs the
depth of its topic, not the number of clients, and a device subscribing to its own topics does
not scan every other device's retained state: that is what keeps 10,000 clients cheap.

A payload is one `bytes` object shared by every subscriber: nothing is copied per device.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from modules.transport import Message, TransportConnectError, TransportError

log = logging.getLogger("modelfleet.simulator.broker")

# After a link comes back (or the broker), clients reconnect spread over this many seconds, as
# real clients with jittered backoff do, rather than all in one loop iteration.
RECONNECT_SPREAD_S = 0.2


class _Node:
    __slots__ = ("children", "clients", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.clients: set[MemoryTransport] = set()  # subscriptions whose filter ends here
        self.message: Message | None = None  # the retained message of this exact topic

    def walk(self) -> Iterator[_Node]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


def _levels(topic: str) -> list[str]:
    return topic.split("/")


def check_filter(topic_filter: str) -> None:
    """MQTT's rules: `#` only as the last level, wildcards only as whole levels."""
    levels = _levels(topic_filter)
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level")


class MemoryBroker:
    """The broker of one simulated control plane; lives on the running event loop."""

    def __init__(self, *, reconnect_spread_s: float = RECONNECT_SPREAD_S) -> None:
        self._subscriptions = _Node()
        self._retained = _Node()
        self._sessions: dict[str, MemoryTransport] = {}
        self._blocked: set[str] = set()  # client ids whose link is down
        self._waiting: set[MemoryTransport] = set()  # started clients that are not connected
        self.up = True
        self.reconnect_spread_s = reconnect_spread_s
        # Counters for benchmarks and tests: what the control plane carried.
        self.published = 0
        self.delivered = 0
        self.bytes_delivered = 0

    # -- what tests and the fleet look at ----------------------------------------------------

    def retained(self, topic: str) -> bytes | None:
        node = self._find(self._retained, topic)
        return node.message.payload if node is not None and node.message is not None else None

    def retained_matching(self, topic_filter: str) -> list[Message]:
        return [node.message for node in self._match_retained(topic_filter) if node.message is not None]

    def connected(self, client_id: str) -> bool:
        return client_id in self._sessions

    @property
    def clients(self) -> int:
        return len(self._sessions)

    # -- faults -------------------------------------------------------------------------------

    def cut(self, client_id: str) -> None:
        """The client's link drops (no DISCONNECT: its will fires) and stays down until `restore`."""
        self._blocked.add(client_id)
        session = self._sessions.get(client_id)
        if session is not None:
            self._drop(session, will=True)

    def restore(self, client_id: str) -> None:
        self._blocked.discard(client_id)
        for client in [c for c in self._waiting if c.client_id == client_id]:
            self._schedule_reconnect(client)

    def is_cut(self, client_id: str) -> bool:
        return client_id in self._blocked

    def go_down(self, *, forget_retained: bool = True) -> None:
        """The broker stops: every client loses its link. No will is published (the broker is
        the one that would publish it). `forget_retained`: as Mosquitto without persistence,
        it comes back with no retained message."""
        self.up = False
        for session in list(self._sessions.values()):
            self._drop(session, will=False)
        if forget_retained:
            self._retained = _Node()

    def come_up(self) -> None:
        self.up = True
        for client in list(self._waiting):
            self._schedule_reconnect(client)

    # -- what transports call -----------------------------------------------------------------

    def _may_connect(self, client: MemoryTransport) -> bool:
        return self.up and client.client_id not in self._blocked

    def _connect(self, client: MemoryTransport) -> None:
        old = self._sessions.get(client.client_id)
        if old is not None and old is not client:  # session takeover, as MQTT brokers do
            self._drop(old, will=False)
        self._sessions[client.client_id] = client
        self._waiting.discard(client)

    def _disconnect(self, client: MemoryTransport) -> None:
        """A clean DISCONNECT: the will is discarded."""
        if self._sessions.get(client.client_id) is client:
            del self._sessions[client.client_id]
        self._unsubscribe_all(client)
        self._waiting.discard(client)

    def _drop(self, client: MemoryTransport, *, will: bool) -> None:
        if self._sessions.get(client.client_id) is client:
            del self._sessions[client.client_id]
        self._unsubscribe_all(client)
        client._link_lost()
        self._waiting.add(client)
        if will and client.will is not None:
            topic, payload, retain = client.will
            self.route(topic, payload, retain=retain)
        if self._may_connect(client):
            self._schedule_reconnect(client)

    def _schedule_reconnect(self, client: MemoryTransport) -> None:
        client._schedule_reconnect(self.reconnect_spread_s)

    def _subscribe(self, client: MemoryTransport, topic_filter: str) -> None:
        node = self._subscriptions
        for level in _levels(topic_filter):
            node = node.children.setdefault(level, _Node())
        if client in node.clients:
            return
        node.clients.add(client)
        for found in self._match_retained(topic_filter):
            if found.message is not None:
                self._deliver(client, found.message)

    def _unsubscribe_all(self, client: MemoryTransport) -> None:
        for topic_filter in client._filters:
            node: _Node | None = self._subscriptions
            for level in _levels(topic_filter):
                node = node.children.get(level) if node is not None else None
            if node is not None:
                node.clients.discard(client)

    def route(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Store (retain) and deliver a message: to each subscribed client once."""
        self.published += 1
        if retain:
            node = self._retained
            for level in _levels(topic):
                node = node.children.setdefault(level, _Node())
            node.message = Message(topic, payload, True) if payload else None
        live = Message(topic, payload, False)
        for client in self._subscribers(topic):
            self._deliver(client, live)

    def _deliver(self, client: MemoryTransport, message: Message) -> None:
        self.delivered += 1
        self.bytes_delivered += len(message.payload)
        client._receive(message)

    # -- topic trees --------------------------------------------------------------------------

    @staticmethod
    def _find(root: _Node, topic: str) -> _Node | None:
        node: _Node | None = root
        for level in _levels(topic):
            node = node.children.get(level) if node is not None else None
        return node

    def _subscribers(self, topic: str) -> set[MemoryTransport]:
        found: set[MemoryTransport] = set()
        nodes = [self._subscriptions]
        for level in _levels(topic):
            following: list[_Node] = []
            for node in nodes:
                if (rest := node.children.get("#")) is not None:
                    found |= rest.clients
                if (exact := node.children.get(level)) is not None:
                    following.append(exact)
                if (any_ := node.children.get("+")) is not None:
                    following.append(any_)
            nodes = following
        for node in nodes:
            found |= node.clients
            if (rest := node.children.get("#")) is not None:  # "a/#" also matches "a"
                found |= rest.clients
        return found

    def _match_retained(self, topic_filter: str) -> list[_Node]:
        nodes = [self._retained]
        for level in _levels(topic_filter):
            if level == "#":
                return [found for node in nodes for found in node.walk()]
            following: list[_Node] = []
            for node in nodes:
                if level == "+":
                    following.extend(node.children.values())
                elif (exact := node.children.get(level)) is not None:
                    following.append(exact)
            nodes = following
        return nodes


class MemoryTransport:
    """One client of a `MemoryBroker`, with the contract of `modules.transport.Transport`:
    subscriptions and on-connect callbacks survive reconnects, `publish` waits for a connection
    up to its timeout, `stop()` disconnects cleanly (no will)."""

    def __init__(
        self,
        broker: MemoryBroker,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.will = will
        self._filters: list[str] = []
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._ready = asyncio.Event()
        self._started = False
        self._stopping = False
        self._reconnect: asyncio.TimerHandle | None = None
        self._callbacks: asyncio.Task[None] | None = None
        self.reconnects = 0

    # -- Transport ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if self._ready.is_set() or self._stopping:
            return self._ready.is_set()
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            pass
        return self._ready.is_set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        check_filter(topic_filter)
        if topic_filter in self._filters:
            return
        self._filters.append(topic_filter)
        if self.connected:
            self.broker._subscribe(self, topic_filter)

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(callback)

    async def start(self, connect_timeout: float = 10.0) -> None:
        if self._started:
            raise TransportError("a MemoryTransport starts once; make a new one after stop()")
        self._started = True
        if not self.broker._may_connect(self):
            self.broker._waiting.add(self)
            try:
                async with asyncio.timeout(connect_timeout):
                    await self._ready.wait()
            except TimeoutError:
                # as a failed connect: the caller may try `start()` again
                self.broker._waiting.discard(self)
                self._started = False
                raise TransportConnectError(
                    f"{self.client_id}: the simulated broker is not reachable (link down or broker down)"
                ) from None
            return
        self._connect()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        if self._stopping:
            raise TransportError(f"cannot publish to {topic}: the transport is stopped")
        if not self._ready.is_set() and not await self.wait_connected(timeout):
            raise TransportError(f"cannot publish to {topic}: not connected within {timeout:g} s")
        self.broker.route(topic, payload, retain=retain)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            while self._inbox:
                yield self._inbox.popleft()
            if self._stopping:
                return
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self._callbacks is not None and not self._callbacks.done():
            self._callbacks.cancel()
        self.broker._disconnect(self)
        self._ready.clear()
        self._inbox_ready.set()

    # -- broker side --------------------------------------------------------------------------

    def _connect(self) -> None:
        self.broker._connect(self)
        for topic_filter in self._filters:
            self.broker._subscribe(self, topic_filter)
        self._ready.set()
        if self._on_connect:
            if self._callbacks is not None and not self._callbacks.done():
                self._callbacks.cancel()
            self._callbacks = asyncio.get_running_loop().create_task(
                self._call_on_connect(), name=f"{self.client_id}-on-connect"
            )

    async def _call_on_connect(self) -> None:
        for callback in list(self._on_connect):
            try:
                await callback()
            except TransportError as exc:
                log.info("%s: on_connect callback failed: %s", self.client_id, exc)
            except Exception:
                log.exception("%s: on_connect callback failed", self.client_id)

    def _link_lost(self) -> None:
        self._ready.clear()

    def _schedule_reconnect(self, spread_s: float) -> None:
        if self._stopping or not self._started or self._reconnect is not None:
            return
        loop = asyncio.get_running_loop()
        delay = spread_s * _jitter(self.client_id)
        self._reconnect = loop.call_later(delay, self._try_reconnect)

    def _try_reconnect(self) -> None:
        self._reconnect = None
        if self._stopping or self.connected or not self.broker._may_connect(self):
            return  # a later restore() or come_up() schedules the next attempt
        self.reconnects += 1
        self._connect()

    def _receive(self, message: Message) -> None:
        if self._stopping:
            return
        self._inbox.append(message)
        self._inbox_ready.set()


def _jitter(client_id: str) -> float:
    """A fixed spread in [0, 1) per client, so a fleet's reconnects do not all land at once."""
    return (hash(client_id) % 1000) / 1000
