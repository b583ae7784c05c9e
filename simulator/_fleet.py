"""A fleet of real agents in one process: the simulator's Python API.

Each simulated device is an `edge_agent.Agent` (the real intake, trust, selection, planner, plan
runner, status book and reporting) with its own data folder, device id and tags. Only the two
parts that touch the outside world are replaced: modules run in a `SimulatedRuntime`, and the
control plane is either the in-memory broker or a real MQTT broker through the agent's own MQTT
transport. So what a test or a rehearsal sees is what a real fleet with the same agent code
would do, minus downloads and processes.

The fleet also watches the control plane the way `modelfleet status` does (every device's
retained report and presence), so waiting helpers judge what is published, not what an agent
holds in memory.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import Agent, AgentConfig
from modules import ConfigError, ModelfleetError
from modules.deployment import DeploymentDocument, Tombstone, sign_document
from modules.device_state import Presence, ReportedState
from modules.mqtt import MqttSettings, MqttTransport
from modules.topics import FleetTopics
from modules.transport import Message, Transport
from simulator._description import FleetDescription, HardwareProfile
from simulator._memory import MemoryBroker, MemoryTransport
from simulator._relay import LinkRelay
from simulator._runtime import SimulatedRuntime
from simulator._tags import TagTemplate, tags_for
from simulator._timeline import Timeline

log = logging.getLogger("modelfleet.simulator")

MEMORY = "memory"
# Outcomes after which a device has finished with a deployment version (for now).
SETTLED = frozenset({"applied", "failed", "not-targeted", "refused", "removed", "offline"})
_START_BATCH = 200
# From this many devices on, what the fleet holds once started is moved out of the garbage
# collector's sight (`gc.freeze`): a full collection over thousands of agents' objects is a
# pause of a second or more on the one loop they all share, and none of it is garbage.
_FREEZE_AT = 500
# and the young generation is collected less often: a round of a large fleet makes objects by the
# hundred thousand, and each collection of them is a pause of its own.
_LARGE_FLEET_GC_THRESHOLD = (100_000, 20, 100)
# What a running fleet keeps (new documents, reports, states) is frozen too, every so often; and
# now and then everything is thawed and collected once, so that garbage frozen meanwhile is freed.
_REFREEZE_S = 10.0
_THAW_S = 300.0


class SimulatorError(ModelfleetError):
    """The simulated fleet could not start, or did not reach the awaited state in time."""


@dataclass(frozen=True)
class Convergence:
    """Where each device stands on one deployment version, and how long it took to get there."""

    deployment: str
    version: int
    seconds: float
    # device id -> the deployment's outcome at (or above) `version`, or "offline", "pending"
    outcomes: dict[str, str]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(self.outcomes.values()))

    def devices(self, outcome: str) -> list[str]:
        return sorted(d for d, o in self.outcomes.items() if o == outcome)


class SimulatedDevice:
    """One device of the fleet: its agent, its simulated modules, and its faults."""

    def __init__(
        self,
        fleet: Fleet,
        index: int,
        config: AgentConfig,
        runtime: SimulatedRuntime | None,
        profile: HardwareProfile | None = None,
        clock_offset_s: float = 0.0,
    ) -> None:
        """`runtime` None: a real device (the agent's default runtime: registry pulls, module
        processes, real inference)."""
        self.fleet = fleet
        # how far this device's clock is off (+ ahead); its agent and runtime read `clock`
        self.clock_offset_s = clock_offset_s
        self.index = index
        self.device_id = config.device_id
        self.config = config
        self.runtime = runtime
        self.profile = profile
        self.agent: Agent | None = None
        self.real = runtime is None
        if runtime is not None:
            runtime.clock = self.clock

    def clock(self) -> datetime:
        """The device's time: the real time plus its offset, as a device whose clock drifted or
        was never synchronised. Every time its agent reports and judges comes from here."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def _sim(self) -> SimulatedRuntime:
        if self.runtime is None:
            raise SimulatorError(
                f"{self.device_id} is a real device: module and download faults are the simulated "
                "runtime's (offline, restart-agent and skew-clock work on it)"
            )
        return self.runtime

    def port(self, module_port: int) -> int:
        """Where a module deployed on `module_port` listens on this device (its `port_base`
        added: what a client of a real device calls)."""
        return self.config.module_port(module_port)

    def skew_clock(self, offset_s: float) -> None:
        """From now on the device's clock is `offset_s` seconds off (0: right again)."""
        self.clock_offset_s = offset_s

    def __repr__(self) -> str:
        kind = "real " if self.real else ""
        return f"<SimulatedDevice {kind}{self.device_id} {'online' if self.online else 'offline'}>"

    @property
    def tags(self) -> dict[str, Any]:
        return dict(self.config.tags)

    @property
    def client_id(self) -> str:
        return f"modelfleet-agent-{self.config.fleet}-{self.device_id}"

    @property
    def online(self) -> bool:
        """Running, and its link to the broker is not cut."""
        return self.agent is not None and not self.fleet._link_is_cut(self)

    # -- faults -------------------------------------------------------------------------------

    def go_offline(self) -> None:
        """Cut the device's link: no DISCONNECT, so the broker publishes its last will; the agent
        keeps running and serving, and reconnects by itself once the link is back."""
        self.fleet._cut(self)
        for timeline in self.fleet._timelines:
            timeline.set_online(self.device_id, False)

    def go_online(self) -> None:
        self.fleet._restore(self)

    def fail_next_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self._sim().fail_next_start(module, reason)

    def fail_every_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self._sim().fail_every_start(module, reason)

    def crash(self, module: str, exit_code: int = 1) -> None:
        self._sim().crash(module, exit_code)

    def make_unhealthy(self, module: str) -> None:
        self._sim().make_unhealthy(module)

    def heal(self, module: str | None = None) -> None:
        self._sim().heal(module)

    def never_ready(self, module: str) -> None:
        self._sim().never_ready(module)

    def crash_after(self, module: str, requests: int) -> None:
        self._sim().crash_after(module, requests)

    def serve(self, module: str, count: int = 1) -> int:
        """`count` requests to the module; how many were answered (see `SimulatedRuntime.serve`)."""
        return self._sim().serve(module, count)

    def slow_downloads(self, factor: float) -> None:
        self._sim().slow_downloads(factor)

    def cut_downloads(self, at_fraction: float = 0.5, *, every: bool = False) -> None:
        self._sim().cut_downloads(at_fraction, every=every)

    def corrupt_downloads(self, *, every: bool = False) -> None:
        self._sim().corrupt_downloads(every=every)

    def fill_disk(self) -> None:
        self._sim().fill_disk()

    def free_disk(self, free_bytes: int | None = None) -> None:
        self._sim().free_disk(free_bytes)

    async def restart_agent(self) -> None:
        """Stop the agent cleanly and start a new one on the same data folder, as a reboot does."""
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None
        await self.fleet._start_agent(self)

    # -- what the control plane says about it -------------------------------------------------

    @property
    def report(self) -> ReportedState | None:
        return self.fleet.report(self.device_id)


class Fleet:
    """`size` simulated devices on one event loop; an async context manager.

    `hub`: `"memory"` (an in-process broker, `fleet.broker`) or an `mqtt://`/`mqtts://` URL of a
    real broker (Mosquitto, the embedded hub). `trust`: publisher public keys (PEM files) every
    device trusts. `tags`: a mapping (values may be `spread(...)` or `share(...)`) or a function
    of the device index. `ids`: a format string with `{i}`. `links`: route each device through a
    cuttable relay so `go_offline` and `broker_down` work against a real broker (default on for
    a real broker; off costs nothing and is what a benchmark wants). `agent_settings`: further
    `AgentConfig` fields for every device (MQTT credentials, retry timings, ...). `prepare`:
    called with each new device before its agent starts (faults that must hold from the first
    document on). `restart_broker`: what restarts a real broker (sync or async), for
    `restart_broker()` and the scenario step. `clock_offsets`: device index -> seconds its clock
    is off (over a profile's `clock_offset_s`). `real`: how many devices (the first ones), or a
    function of the index choosing them, run the agent's real runtime, with `real_settings`
    (`registry`, `port_base`, `port_step`, other `AgentConfig` fields).
    """

    def __init__(
        self,
        size: int,
        *,
        trust: Sequence[Path | str],
        hub: str = MEMORY,
        fleet: str = "sim",
        tags: TagTemplate | None = None,
        ids: str = "sim-{i:04d}",
        root: Path | None = None,
        heartbeat_s: float = 30.0,
        start_delay_s: float = 0.0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        links: bool | None = None,
        broker: MemoryBroker | None = None,
        agent_settings: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 60.0,
        prepare: Callable[[SimulatedDevice], None] | None = None,
        profiles: Callable[[int], HardwareProfile] | None = None,
        key: Ed25519PrivateKey | None = None,
        restart_broker: Callable[[], Awaitable[None] | None] | None = None,
        clock_offsets: Callable[[int], float] | None = None,
        real: int | Callable[[int], bool] = 0,
        real_settings: Mapping[str, Any] | None = None,
    ) -> None:
        if size < 0:
            raise ConfigError("a fleet has 0 or more devices")
        if not trust:
            raise ConfigError("a simulated fleet needs at least one trusted publisher key (trust=[pem])")
        self.size = size
        self.hub = hub
        self.memory = hub == MEMORY
        if not self.memory and urlsplit(hub).scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"hub must be 'memory' or an mqtt:// or mqtts:// URL, got {hub!r}")
        self.topics = FleetTopics(fleet)
        self.trust = [Path(p) for p in trust]
        self.tags = tags
        self.ids = ids
        self.heartbeat_s = heartbeat_s
        self.start_delay_s = start_delay_s
        self.providers = tuple(providers)
        self.links = (not self.memory) if links is None else links
        if self.links and self.memory:
            self.links = False  # the in-memory broker cuts links itself
        self.agent_settings = dict(agent_settings or {})
        self.connect_timeout_s = connect_timeout_s
        self.prepare = prepare
        self.profiles = profiles
        self.key = key  # what `deploy` signs with when given no key
        self._restart_broker_hook = restart_broker
        self.clock_offsets = clock_offsets
        self.real = real
        self.real_settings = dict(real_settings or {})
        self._real_count = 0
        if (real if isinstance(real, int) else 0) < 0:
            raise ConfigError("real: a number of devices (0 or more) or a function of the device index")
        self.broker: MemoryBroker | None = (broker or MemoryBroker()) if self.memory else None
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="modelfleet-sim-"))
        self._relay: LinkRelay | None = None
        self.devices: list[SimulatedDevice] = []
        self._by_id: dict[str, SimulatedDevice] = {}
        self._observer: Transport | None = None
        self._observer_task: asyncio.Task[None] | None = None
        self._raw_reports: dict[str, bytes] = {}
        self._reports: dict[str, ReportedState] = {}
        self._presence: dict[str, bool] = {}
        self._changed = asyncio.Event()
        self.reports_seen = 0
        self._frozen = False
        self._freezer: asyncio.Task[None] | None = None
        self._timelines: list[Timeline] = []
        self._gc_threshold: tuple[int, int, int] | None = None

    @classmethod
    def from_description(
        cls, description: FleetDescription, *, trust: Sequence[Path | str], **settings: Any
    ) -> Fleet:
        """A fleet shaped by a fleet file (`load_fleet_file`); `settings` as for `Fleet(...)`,
        and they win over the file (e.g. a different `fleet` name)."""
        given: dict[str, Any] = {
            "tags": description.tag_template(),
            "ids": description.ids,
            "profiles": description.profile_for(),
        }
        if description.fleet is not None:
            given["fleet"] = description.fleet
        given.update(settings)
        return cls(description.count, trust=trust, **given)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Watch the control plane, then start every device (in batches) and wait until each is
        connected."""
        try:
            await self._start_observer()
            if self.links:
                parts = urlsplit(self.hub)
                self._relay = LinkRelay(
                    parts.hostname or "127.0.0.1", parts.port or 1883, scheme=parts.scheme
                )
            await self.add(self.size)
        except BaseException:
            await self.stop()
            raise

    async def add(self, count: int) -> list[SimulatedDevice]:
        """Devices join (e.g. late joiners of a rollout): they get the retained deployments at once."""
        first = len(self.devices)
        new = [self._make_device(i) for i in range(first, first + count)]
        for device in new:
            self.devices.append(device)
            self._by_id[device.device_id] = device
            if self.prepare is not None:
                self.prepare(device)
        large = len(self.devices) >= _FREEZE_AT
        if large:
            self._large_fleet_gc()
        for at in range(0, len(new), _START_BATCH):
            await asyncio.gather(*(self._start_agent(d) for d in new[at : at + _START_BATCH]))
            if large:
                gc.freeze()  # batch by batch: no full collection over the half-started fleet
        await self._wait_connected(new)
        await self._wait_reported(new)
        if large:
            gc.freeze()
        return new

    def _large_fleet_gc(self) -> None:
        self._frozen = True
        gc.freeze()
        if self._gc_threshold is None:
            self._gc_threshold = gc.get_threshold()
            gc.set_threshold(*_LARGE_FLEET_GC_THRESHOLD)
        if self._freezer is None:
            self._freezer = asyncio.get_running_loop().create_task(self._refreeze(), name="sim-gc")

    def _make_device(self, index: int) -> SimulatedDevice:
        device_id = self.ids.format(i=index)
        settings = {
            "status_port": 0,  # no HTTP listener per simulated device
            "heartbeat_s": self.heartbeat_s,
            "retry_base_s": 0.5,
            "retry_max_s": 10.0,
            **self.agent_settings,
        }
        try:
            config = AgentConfig(
                device_id=device_id,
                fleet=self.topics.fleet,
                tags=tags_for(self.tags, index),
                hub=self.hub if not self.memory else "mqtt://127.0.0.1:1",
                trust=self.trust,
                data_dir=self.root / "devices" / device_id,
                **settings,
            )
        except ValueError as exc:
            raise ConfigError(f"device {device_id!r}: {exc}") from None
        profile = self.profiles(index) if self.profiles is not None else None
        runtime: SimulatedRuntime | None
        if self._is_real(index, profile):
            runtime = None
            config = self._real_config(config)
        elif profile is not None:
            runtime = SimulatedRuntime(**profile.runtime_settings())
        else:
            runtime = SimulatedRuntime(providers=self.providers, start_delay_s=self.start_delay_s)
        offset = profile.clock_offset_s if profile is not None else 0.0
        if self.clock_offsets is not None:
            offset = self.clock_offsets(index)
        return SimulatedDevice(self, index, config, runtime, profile, offset)

    def _is_real(self, index: int, profile: HardwareProfile | None) -> bool:
        if profile is not None and profile.real:
            return True
        return self.real(index) if callable(self.real) else index < self.real

    def _real_config(self, config: AgentConfig) -> AgentConfig:
        """A real device's settings: the registry and ports from `real_settings`, each real
        device's module ports shifted by its own `port_base` (they share one host), and module
        ports on loopback unless said otherwise."""
        settings = {"listen_host": "127.0.0.1", **self.real_settings}
        base = int(settings.pop("port_base", 20000))
        step = int(settings.pop("port_step", 100))
        unknown = set(settings) - set(AgentConfig.model_fields)
        if unknown:
            raise ConfigError(f"real_settings: not agent settings: {', '.join(sorted(unknown))}")
        settings["port_base"] = base + self._real_count * step
        self._real_count += 1
        return config.model_copy(update=settings)

    @property
    def real_devices(self) -> list[SimulatedDevice]:
        return [d for d in self.devices if d.real]

    async def _start_agent(self, device: SimulatedDevice) -> None:
        transport: Transport | None = None
        if self.memory:
            assert self.broker is not None
            will = Presence(device_id=device.device_id, online=False).model_dump_json().encode()
            transport = MemoryTransport(
                self.broker, device.client_id, will=(self.topics.status(device.device_id), will, True)
            )
        elif self._relay is not None:
            url = await self._relay.open(device.device_id)
            device.config = device.config.model_copy(update={"hub": url})
        agent = Agent(device.config, transport=transport, runtime=device.runtime, clock=device.clock)
        await agent.start()
        device.agent = agent

    async def _wait_connected(self, devices: Iterable[SimulatedDevice]) -> None:
        waiting = [d for d in devices if d.agent is not None and d.online]
        results = await asyncio.gather(
            *(d.agent.transport.wait_connected(self.connect_timeout_s) for d in waiting if d.agent)
        )
        missing = [d.device_id for d, ok in zip(waiting, results, strict=True) if not ok]
        if missing:
            raise SimulatorError(
                f"{len(missing)} simulated devices did not connect to {self.hub} within "
                f"{self.connect_timeout_s:g} s (e.g. {', '.join(missing[:3])})"
            )

    async def _wait_reported(self, devices: list[SimulatedDevice]) -> None:
        """Until the broker holds a report of each device: before that, a publisher watching a
        rollout would count the fleet as smaller than it is."""
        online = [d for d in devices if d.online]
        try:
            await self.wait_for(
                lambda: all(d.device_id in self._raw_reports for d in online),
                timeout=self.connect_timeout_s,
                what="a first report from every device",
            )
        except SimulatorError:
            missing = [d.device_id for d in online if d.device_id not in self._raw_reports]
            raise SimulatorError(
                f"{len(missing)} simulated devices published no report within {self.connect_timeout_s:g} s "
                f"(e.g. {', '.join(missing[:3])})"
            ) from None

    @staticmethod
    async def _refreeze() -> None:
        since_thaw = 0.0
        while True:
            await asyncio.sleep(_REFREEZE_S)
            since_thaw += _REFREEZE_S
            if since_thaw >= _THAW_S:
                since_thaw = 0.0
                gc.unfreeze()
                gc.collect()
            gc.freeze()

    async def stop(self) -> None:
        if self._freezer is not None:
            self._freezer.cancel()
            await asyncio.gather(self._freezer, return_exceptions=True)
            self._freezer = None
        if self._frozen:
            gc.unfreeze()  # what the stopped fleet leaves is garbage again
            self._frozen = False
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None
        running = [d.agent for d in self.devices if d.agent is not None]
        for at in range(0, len(running), _START_BATCH):
            await asyncio.gather(*(a.stop() for a in running[at : at + _START_BATCH]), return_exceptions=True)
        for device in self.devices:
            device.agent = None
        for timeline in self._timelines:
            await timeline.stop()
        self._timelines.clear()
        if self._observer_task is not None:
            self._observer_task.cancel()
            await asyncio.gather(self._observer_task, return_exceptions=True)
            self._observer_task = None
        if self._observer is not None:
            await self._observer.stop()
            self._observer = None
        if self._relay is not None:
            await self._relay.close()
            self._relay = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- devices ------------------------------------------------------------------------------

    def device(self, which: int | str) -> SimulatedDevice:
        """By index or device id."""
        if isinstance(which, int):
            return self.devices[which]
        try:
            return self._by_id[which]
        except KeyError:
            raise KeyError(f"no simulated device {which!r}") from None

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.devices)

    def where(self, predicate: Callable[[SimulatedDevice], bool]) -> list[SimulatedDevice]:
        return [d for d in self.devices if predicate(d)]

    # -- faults of the whole control plane ------------------------------------------------------

    def broker_down(self, *, forget_retained: bool = True) -> None:
        """The broker drops out for every device. In memory it stops (and, as Mosquitto without
        persistence, comes back empty unless `forget_retained=False`); against a real broker
        every device's link is cut (the broker itself keeps running and keeps its messages)."""
        if self.broker is not None:
            self.broker.go_down(forget_retained=forget_retained)
        elif self._relay is not None:
            self._relay.cut_all()
        else:
            raise SimulatorError("broker_down against a real broker needs the fleet's links (links=True)")

    async def restart_broker(self, down_s: float = 0.0) -> None:
        """The broker process restarts: every client loses its connection, and what the broker
        kept (retained deployments, reports, presence) is gone unless it persists it. In memory
        the fleet does it itself; against a real broker it calls the `restart_broker` hook given
        to `Fleet(...)` (the test's own Mosquitto, a service manager...). The fleet's view of the
        control plane is forgotten too and rebuilt from what the broker carries afterwards, so
        waiting helpers judge the restarted broker, not the memory of the old one."""
        if self.broker is not None:
            self.broker.go_down(forget_retained=True)
            await asyncio.sleep(down_s)
            self.broker.come_up()
        elif self._restart_broker_hook is not None:
            outcome = self._restart_broker_hook()
            if outcome is not None:
                await outcome
        else:
            raise SimulatorError(
                "restarting a real broker needs a hook: Fleet(..., restart_broker=async_function), "
                "or `sim run --broker-restart-command CMD`"
            )
        self._raw_reports.clear()
        self._reports.clear()
        self._presence.clear()
        self._changed.set()

    async def reported_again(self, timeout: float | None = None) -> None:
        """Until the broker holds a report of every online device (after a restart that lost them)."""
        online = [d for d in self.devices if d.online]
        await self.wait_for(
            lambda: all(d.device_id in self._raw_reports for d in online),
            timeout=self.connect_timeout_s if timeout is None else timeout,
            what="a report from every online device",
        )

    def broker_up(self) -> None:
        if self.broker is not None:
            self.broker.come_up()
        elif self._relay is not None:
            self._relay.restore_all()

    def _cut(self, device: SimulatedDevice) -> None:
        if self.broker is not None:
            self.broker.cut(device.client_id)
        elif self._relay is not None:
            self._relay.cut(device.device_id)
        else:
            raise SimulatorError("go_offline against a real broker needs the fleet's links (links=True)")

    def _restore(self, device: SimulatedDevice) -> None:
        if self.broker is not None:
            self.broker.restore(device.client_id)
        elif self._relay is not None:
            self._relay.restore(device.device_id)

    def _link_is_cut(self, device: SimulatedDevice) -> bool:
        if self.broker is not None:
            return self.broker.is_cut(device.client_id) or not self.broker.up
        if self._relay is not None:
            try:
                return self._relay.is_cut(device.device_id)
            except KeyError:
                return False
        return False

    # -- the publisher's side -----------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        assert self._observer is not None, "the fleet is not started"
        await self._observer.publish(topic, payload, retain=retain, timeout=10)

    async def deploy(
        self, doc: DeploymentDocument | Tombstone, key: Ed25519PrivateKey | None = None
    ) -> DeploymentDocument | Tombstone:
        """Sign `doc` (with `key`, or the fleet's `key`) and publish it retained where agents
        look for it (a fleet deployment, or a device's override when `doc.device` is set);
        returns the signed document."""
        key = key or self.key
        if key is None:
            raise SimulatorError("deploy needs a signing key: deploy(doc, key) or Fleet(..., key=key)")
        signed = sign_document(doc, key)
        topic = self.topics.desired(doc.device) if doc.device else self.topics.deployment(doc.name)
        await self.publish(topic, json.dumps(signed.to_json_dict(), separators=(",", ":")).encode())
        return signed

    # -- watching the control plane -----------------------------------------------------------

    async def _start_observer(self) -> None:
        client_id = f"modelfleet-simulator-{self.topics.fleet}-{os.urandom(3).hex()}"
        if self.memory:
            assert self.broker is not None
            observer: Transport = MemoryTransport(self.broker, client_id)
        else:
            s = self.agent_settings
            observer = MqttTransport(
                MqttSettings(
                    url=self.hub,
                    client_id=client_id,
                    username=s.get("mqtt_username"),
                    password=s.get("mqtt_password"),
                    tls_ca_file=s.get("mqtt_tls_ca_file"),
                    tls_cert_file=s.get("mqtt_tls_cert_file"),
                    tls_key_file=s.get("mqtt_tls_key_file"),
                ),
                queue_size=1_000_000,
            )
        observer.subscribe(self.topics.all_reported)
        observer.subscribe(self.topics.all_status)
        self._observer = observer
        self._observer_task = asyncio.get_running_loop().create_task(self._observe(), name="sim-observer")
        try:
            await observer.start(connect_timeout=self.connect_timeout_s)
        except ModelfleetError as exc:
            raise SimulatorError(f"cannot reach the broker at {self.hub}: {exc}") from None

    async def _observe(self) -> None:
        assert self._observer is not None
        async for message in self._observer.messages():
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        parsed = self.topics.parse_device_topic(message.topic)
        if parsed is None:
            return
        device_id, rest = parsed
        if rest == "reported":
            self.reports_seen += 1
            self._raw_reports[device_id] = message.payload
            self._reports.pop(device_id, None)
            for timeline in self._timelines:
                timeline.on_report(device_id, message.payload)
        elif rest == "status":
            try:
                self._presence[device_id] = bool(json.loads(message.payload).get("online"))
            except (ValueError, AttributeError):
                self._presence.pop(device_id, None)
            for timeline in self._timelines:
                timeline.on_presence(device_id, message.payload, self._presence.get(device_id, False))
        else:
            return
        self._changed.set()

    def timeline(self, deployment: str, *, every_s: float = 0.5) -> Timeline:
        """Start recording `deployment` over the fleet (per-state counts over time, messages and
        bytes per device, failures by reason) from what the broker carries; `await
        timeline.stop()` ends it. Devices that join later are counted from their first report."""
        timeline = Timeline(deployment, [d.device_id for d in self.devices], every_s=every_s)
        for device_id, payload in self._raw_reports.items():
            timeline.on_report(device_id, payload)
        timeline.messages.clear()
        timeline.bytes.clear()
        for device in self.devices:
            if not device.online:
                timeline.set_online(device.device_id, False)
        self._timelines.append(timeline)
        return timeline

    def report(self, device_id: str) -> ReportedState | None:
        """The device's last report as published on the broker (None: none seen, or unreadable)."""
        cached = self._reports.get(device_id)
        if cached is not None:
            return cached
        raw = self._raw_reports.get(device_id)
        if not raw:
            return None
        try:
            report = ReportedState.model_validate_json(raw)
        except ValueError:
            return None
        self._reports[device_id] = report
        return report

    def raw_report(self, device_id: str) -> bytes | None:
        """The device's last report as the broker carried it (the same object until a new one)."""
        return self._raw_reports.get(device_id)

    def presence(self, device_id: str) -> bool | None:
        """Online according to the broker (the device's status topic, last will included)."""
        return self._presence.get(device_id)

    def outcome(self, device_id: str, deployment: str, version: int) -> str:
        """The device's verdict on `deployment` at `version` or later, as published; "offline"
        when its link is cut or its agent stopped, "pending" before it has one."""
        device = self._by_id.get(device_id)
        if device is not None and not device.online:
            return "offline"
        report = self.report(device_id)
        seen = report.deployments.get(deployment) if report is not None else None
        if seen is None or seen.version < version:
            return "pending"
        return seen.outcome

    def outcomes(
        self, deployment: str, version: int, devices: Iterable[SimulatedDevice | str] | None = None
    ) -> dict[str, str]:
        ids = [d.device_id if isinstance(d, SimulatedDevice) else d for d in (devices or self.devices)]
        return {device_id: self.outcome(device_id, deployment, version) for device_id in ids}

    async def changed(self, timeout: float) -> None:
        """Until the next report or presence change (or `timeout`)."""
        self._changed.clear()
        await self._wait_changed(timeout)

    async def _wait_changed(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 60.0, what: str = "") -> Any:
        """`predicate()`'s first truthy value, re-checked after every change seen on the broker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()  # before the check: a change during it is not missed
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SimulatorError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
            await self._wait_changed(min(remaining, 1.0))
            await asyncio.sleep(0.02)  # a burst of reports is judged once

    async def converged(
        self,
        deployment: str,
        version: int,
        *,
        devices: Iterable[SimulatedDevice | str] | None = None,
        timeout: float = 60.0,
    ) -> Convergence:
        """Wait until every device (or those given) has settled on `deployment` at `version` or
        later: applied, failed, not targeted (outside the condition or the rollout step),
        refused, removed, or offline. Returns each device's outcome; tests assert on them."""
        chosen = list(devices) if devices is not None else list(self.devices)
        loop = asyncio.get_running_loop()
        began = loop.time()

        def settled() -> dict[str, str] | None:
            outcomes = self.outcomes(deployment, version, chosen)
            return outcomes if all(o in SETTLED for o in outcomes.values()) else None

        try:
            outcomes = await self.wait_for(settled, timeout=timeout, what=f"{deployment} v{version}")
        except SimulatorError:
            counts = Counter(self.outcomes(deployment, version, chosen).values())
            raise SimulatorError(
                f"{deployment} version {version} did not settle on {len(chosen)} devices within "
                f"{timeout:g} s: {dict(counts)}"
            ) from None
        return Convergence(deployment, version, loop.time() - began, outcomes)
