"""The agent: observe (documents from the broker), decide (selection + plan), act (executor),
report (retained state). One owner starts, cancels and awaits every task.

The agent keeps serving what it last applied whatever happens upstream: a broker that is down,
a registry that is unreachable, a document that is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from edge_agent._config import AgentConfig
from edge_agent._device_info import device_info, execution_providers
from edge_agent._executor import Executor
from edge_agent._inference_stats import scrape
from edge_agent._intake import Accepted, Deleted, Intake, Refused, Unchanged
from edge_agent._planner import ActualModule, Remove, Replace, Start, desired_modules, plan
from edge_agent._runtime import ProcessRuntime
from edge_agent._state import PersistedState, StateFile
from edge_agent._store import ArtifactStore
from modules import ConfigError, ModelfleetError
from modules.deployment import DeploymentDocument, DeviceFacts, select_deployments
from modules.device_state import (
    DeploymentState,
    MethodRequest,
    MethodResponse,
    ModuleState,
    Presence,
    Refusal,
    ReportedState,
)
from modules.mqtt import Message, MqttConnectError, MqttError, MqttSettings, MqttTransport
from modules.service_keys import (
    ServiceKeys,
    device_public_key,
    load_or_create_device_key,
    open_keys,
)
from modules.signing import load_public_key
from modules.tasks import cancel_within
from modules.topics import FleetTopics

log = logging.getLogger("modelfleet.agent")
_STOP_GRACE_S = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = FleetTopics(config.fleet)
        self.device_id = config.device_id
        data = config.data_dir
        self.state_file = StateFile(data / "state.json")
        self.persisted: PersistedState = PersistedState()
        self.intake = Intake(self.topics, self.device_id, self._trusted_keys())
        self.store = ArtifactStore(data / "store", reserve_bytes=config.reserve_bytes)
        self.runtime = ProcessRuntime(data / "runtime")
        self.executor = Executor(config, self.store, self.runtime, self._on_module_state, self._keys_for)
        self.device_key = load_or_create_device_key(data / "device-x25519.pem")
        self.keys: dict[
            str, tuple[int, ServiceKeys]
        ] = {}  # deployment -> (version, opened keys), memory only
        self.modules: dict[str, ModuleState] = {}
        self.deployments: dict[str, DeploymentState] = {}
        self.refused: deque[Refusal] = deque(maxlen=20)
        self.providers: list[str] = []
        self.seq = 0
        self.transport: MqttTransport | None = None
        self._reconcile_wanted = asyncio.Event()
        self._report_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._status_runner: web.AppRunner | None = None
        self.reconciled = asyncio.Event()  # set after every reconcile pass (tests and `agent run --once`)

    # -- set-up -------------------------------------------------------------------------------

    def _trusted_keys(self) -> list[Any]:
        keys = []
        for path in self.config.trust:
            try:
                keys.append(load_public_key(path.read_bytes()))
            except OSError as exc:
                raise ConfigError(f"cannot read trusted key {path}: {exc.strerror}") from None
        if not keys:
            log.warning("no trusted publisher keys configured: every deployment will be refused")
        return keys

    def _mqtt_settings(self) -> MqttSettings:
        c = self.config
        password = c.secret("mqtt_password")
        return MqttSettings(
            url=c.hub,
            client_id=f"modelfleet-agent-{c.fleet}-{c.device_id}",
            username=c.mqtt_username,
            password=password,
            tls_ca_file=c.mqtt_tls_ca_file,
            tls_cert_file=c.mqtt_tls_cert_file,
            tls_key_file=c.mqtt_tls_key_file,
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.persisted = self.state_file.load()
        for name, wire in list(self.persisted.sealed_keys.items()):
            self._open_keys(name, wire)
        for name, reason in self.persisted.failed_reasons.items():
            self.modules.setdefault(name, ModuleState(name=name, status="failed", last_error=reason))
        for record in list(self.persisted.modules.values()):
            new = await self.executor.readopt(record)
            if new is None:
                del self.persisted.modules[record.module]
            else:
                self.persisted.modules[record.module] = new
        self._save()
        will = Presence(device_id=self.device_id, online=False).model_dump_json().encode()
        self.transport = MqttTransport(
            self._mqtt_settings(), will=(self.topics.status(self.device_id), will, True)
        )
        for topic in (
            self.topics.all_deployments,
            self.topics.desired(self.device_id),
            self.topics.method_requests(self.device_id),
            self.topics.all_keys(self.device_id),
        ):
            self.transport.subscribe(topic)
        self.transport.on_connect(self._on_connect)
        self.providers = await execution_providers()
        await self._start_status_endpoint()
        self._spawn(self._connect_loop(), "mqtt-connect")
        self._spawn(self._message_loop(), "messages")
        self._spawn(self._reconcile_loop(), "reconcile")
        self._spawn(self._report_loop(), "report")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._reconcile_wanted.set()

    async def _connect_loop(self) -> None:
        """First connection; the transport reconnects by itself afterwards. The agent serves
        what it has meanwhile."""
        assert self.transport is not None
        delay = 1.0
        while True:
            try:
                await self.transport.start()
                return
            except MqttConnectError as exc:
                log.warning("control plane unreachable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        self._stopping.set()
        # Bounded: a task that ignores its cancellation must not keep the agent from stopping.
        for task in await cancel_within(self._tasks, _STOP_GRACE_S):
            log.error("task %s did not stop within %.0f s; leaving it", task.get_name(), _STOP_GRACE_S)
        self._tasks.clear()
        await self.executor.shutdown()
        if self.transport is not None:
            with contextlib.suppress(MqttError):
                offline = Presence(device_id=self.device_id, online=False, at=_now())
                await self.transport.publish(
                    self.topics.status(self.device_id),
                    offline.model_dump_json().encode(),
                    retain=True,
                    timeout=2,
                )
            await self.transport.stop()
        if self._status_runner is not None:
            await self._status_runner.cleanup()
        self.persisted.modules.clear()
        self._save()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    # -- observe ------------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        assert self.transport is not None
        online = Presence(device_id=self.device_id, online=True, at=_now())
        await self.transport.publish(
            self.topics.status(self.device_id), online.model_dump_json().encode(), retain=True
        )
        self._report_wanted.set()

    async def _message_loop(self) -> None:
        assert self.transport is not None
        async for message in self.transport.messages():
            try:
                await self._on_message(message)
            except Exception:
                log.exception("could not handle a message on %s", message.topic)

    async def _on_message(self, message: Message) -> None:
        parsed = self.topics.parse_device_topic(message.topic)
        if parsed is not None and parsed[0] == self.device_id and parsed[1].startswith("methods/req/"):
            await self._on_method(message, parsed[1])
            return
        if parsed is not None and parsed[0] == self.device_id and parsed[1].startswith("keys/"):
            self._on_keys(message, parsed[1][len("keys/") :])
            return
        slot, verdict = self.intake.evaluate(
            message.topic, message.payload, self.persisted.documents, self.persisted.last_versions
        )
        if isinstance(verdict, Unchanged):
            return
        if isinstance(verdict, Refused):
            log.warning("refused document on %s: %s", message.topic, verdict.reason)
            self.refused.appendleft(
                Refusal(
                    topic=message.topic,
                    deployment=verdict.name,
                    version=verdict.version,
                    reason=verdict.reason,
                    at=_now(),
                )
            )
            self._report_wanted.set()
            return
        assert slot is not None
        if isinstance(verdict, Deleted):
            if self.persisted.documents.pop(slot, None) is None:
                return
            self.persisted.applied_documents.pop(slot, None)
            self.deployments[slot] = DeploymentState(
                name=slot, version=self.persisted.last_versions.get(slot, 0), outcome="removed", at=_now()
            )
            log.info("deployment %s removed", slot)
        elif isinstance(verdict, Accepted):
            self.persisted.documents[slot] = verdict.raw
            self.persisted.last_versions[slot] = verdict.document.version
            log.info("accepted %s version %d (key %s)", slot, verdict.document.version, verdict.key_id)
        self._save()
        self._reconcile_wanted.set()

    def _open_keys(self, name: str, wire: dict[str, Any]) -> str | None:
        """Open a sealed keys document into memory; the reason when it cannot be used."""
        try:
            doc, keys = open_keys(
                wire, self.device_key, self.intake.trusted, fleet=self.config.fleet, device=self.device_id
            )
        except ModelfleetError as exc:
            return str(exc)
        if doc.name != name:
            return f"keys for {doc.name!r} were published on the topic of {name!r}"
        self.keys[name] = (doc.version, keys)
        return None

    def _on_keys(self, message: Message, name: str) -> None:
        if not message.payload:
            if self.persisted.sealed_keys.pop(name, None) is not None:
                self.keys.pop(name, None)
                self._save()
                self._reconcile_wanted.set()
            return
        previous = self.keys.get(name)
        try:
            wire = json.loads(message.payload)
            if not isinstance(wire, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            reason: str | None = f"malformed keys document: {exc}"
        else:
            version = wire.get("version")
            if previous is not None and isinstance(version, int) and version <= previous[0]:
                if self.persisted.sealed_keys.get(name) == wire:
                    return
                reason = f"replayed keys document: version {version} is not above {previous[0]}"
            else:
                reason = self._open_keys(name, wire)
        if reason is not None:
            log.warning("refused keys for %s: %s", name, reason)
            self.refused.appendleft(Refusal(topic=message.topic, deployment=name, reason=reason, at=_now()))
            self._report_wanted.set()
            return
        self.persisted.sealed_keys[name] = wire  # stored sealed: the plaintext exists only in memory
        self._save()
        log.info("scoring keys for %s updated (version %d)", name, self.keys[name][0])
        self._reconcile_wanted.set()

    def _keys_for(self, deployment: str | None) -> ServiceKeys | None:
        entry = self.keys.get(deployment) if deployment else None
        return entry[1] if entry else None

    # -- decide + act -------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; the running modules are untouched")
            self.reconciled.set()

    def _documents(self) -> dict[tuple[str, int], tuple[DeploymentDocument, dict[str, Any]]]:
        docs: dict[tuple[str, int], tuple[DeploymentDocument, dict[str, Any]]] = {}
        for source in (self.persisted.applied_documents, self.persisted.documents):
            for raw in source.values():
                try:
                    doc = DeploymentDocument.model_validate(raw)
                except ValidationError:
                    continue
                docs[(doc.name, doc.version)] = (doc, raw)
        return docs

    async def reconcile(self) -> None:
        docs = self._documents()
        facts = DeviceFacts(self.device_id, tags=self.config.tags)
        selection = select_deployments(facts, [doc for doc, _ in docs.values()])
        owners: dict[str, str] = {}
        for ref in selection.applied:
            doc = docs[(ref.name, ref.version)][0]
            for module_name in doc.content.modules:
                owners[module_name] = ref.name
        keys_versions = {name: version for name, (version, _) in self.keys.items()}
        desired, unsupported = desired_modules(selection.manifest, owners, keys_versions)
        actual = {
            name: ActualModule(name, rec.fingerprint, rec.digest, rec.startup_order)
            for name, rec in self.persisted.modules.items()
        }
        failures: dict[str, str] = {u.name: u.reason for u in unsupported}
        # A module that must check keys never serves before its keys arrived (nor is it stopped
        # meanwhile if an older version runs): it waits, reported as pending.
        waiting = {n for n, d in desired.items() if d.auth_required and d.keys_version is None}
        for name in waiting:
            if name not in self.persisted.modules:
                self.modules[name] = ModuleState(
                    name=name,
                    deployment=desired[name].deployment,
                    status="pending",
                    last_error="waiting for scoring keys",
                )
        ready = {n: d for n, d in desired.items() if n not in waiting}
        current = {n: a for n, a in actual.items() if n not in waiting}
        for command in plan(ready, current, self.persisted.failed):
            name = command.actual.name if isinstance(command, Remove) else command.desired.name
            try:
                if isinstance(command, Remove):
                    await self.executor.remove(command)
                    self.persisted.modules.pop(name, None)
                    self.modules.pop(name, None)
                else:
                    action = self.executor.start if isinstance(command, Start) else self.executor.replace
                    record = await action(command)  # type: ignore[arg-type]
                    self.persisted.modules[name] = record
                    self.persisted.failed.pop(name, None)
                    self.persisted.failed_reasons.pop(name, None)
            except ModelfleetError as exc:
                assert isinstance(command, Start | Replace)
                reason = str(exc)
                log.error(
                    "module %s: %s; %s",
                    name,
                    reason,
                    "previous version keeps serving" if isinstance(command, Replace) else "not started",
                )
                self.persisted.failed[name] = command.desired.fingerprint
                self.persisted.failed_reasons[name] = reason
                failures[name] = reason
                self._mark_failed(name, command.desired.deployment, reason)
            self._save()
        for name in list(self.persisted.failed):
            if name not in desired:
                self.persisted.failed.pop(name, None)
                self.persisted.failed_reasons.pop(name, None)
        self._update_deployments(selection, docs, desired, failures)
        self.store.gc({rec.digest for rec in self.persisted.modules.values()})
        self._save()
        self._report_wanted.set()

    def _mark_failed(self, name: str, deployment: str | None, reason: str) -> None:
        current = self.modules.get(name)
        if current is not None and name in self.persisted.modules:
            self.modules[name] = current.model_copy(update={"last_error": reason})
        else:
            self.modules[name] = ModuleState(
                name=name, deployment=deployment, status="failed", last_error=reason
            )

    def _update_deployments(
        self, selection: Any, docs: dict, desired: dict, failures: dict[str, str]
    ) -> None:
        now = _now()
        applied_names = set()
        for ref in selection.applied:
            raw = docs[(ref.name, ref.version)][1]
            mine = [n for n, d in desired.items() if d.deployment == ref.name]
            problems = [f"{n}: {failures[n]}" for n in mine if n in failures]
            outcome = "failed" if problems else "applied"
            self.deployments[ref.name] = DeploymentState(
                name=ref.name,
                version=ref.version,
                outcome=outcome,
                reason="; ".join(problems) or None,
                at=now,
            )
            if not problems:
                self.persisted.applied_documents[ref.name] = raw
            applied_names.add(ref.name)
        for ref in selection.deferred:
            if ref.name not in applied_names:
                self.deployments[ref.name] = DeploymentState(
                    name=ref.name,
                    version=ref.version,
                    outcome="not-targeted",
                    reason="not in the rollout step yet",
                    at=now,
                )
        for slot, raw in self.persisted.documents.items():
            name = raw.get("name", slot)
            if name not in applied_names and name not in {r.name for r in selection.deferred}:
                self.deployments[name] = DeploymentState(
                    name=name, version=int(raw.get("version", 0)), outcome="not-targeted", at=now
                )
                self.persisted.applied_documents.pop(slot, None)

    def _on_module_state(self, name: str, state: ModuleState) -> None:
        previous = self.modules.get(name)
        if previous is not None and previous.digest == state.digest and state.inference_count == 0:
            # counts come from the heartbeat's scrape; a status change must not zero them
            state = state.model_copy(
                update={
                    "inference_count": previous.inference_count,
                    "inference_errors": previous.inference_errors,
                    "latency_ms_avg": previous.latency_ms_avg,
                }
            )
        reason = self.persisted.failed_reasons.get(name)
        if reason and state.last_error is None:
            state = state.model_copy(update={"last_error": reason})
        self.modules[name] = state
        record = self.persisted.modules.get(name)
        if record is not None and state.pid and record.pid != state.pid and state.digest == record.digest:
            self.persisted.modules[name] = record.model_copy(update={"pid": state.pid})
            self._save()
        self._report_wanted.set()

    def _save(self) -> None:
        self.state_file.save(self.persisted)

    # -- report -------------------------------------------------------------------------------

    def reported_state(self) -> ReportedState:
        self.seq += 1
        return ReportedState(
            device_id=self.device_id,
            fleet=self.config.fleet,
            seq=self.seq,
            at=_now(),
            tags=self.config.tags,
            device=device_info(self.config.data_dir, self.providers, device_public_key(self.device_key)),
            deployments=dict(self.deployments),
            modules=dict(self.modules),
            refused=list(self.refused),
        )

    async def _report_loop(self) -> None:
        while True:
            await self._report_wanted.wait()
            await asyncio.sleep(0.1)  # coalesce bursts of state changes into one report
            self._report_wanted.clear()
            await self.publish_report()

    async def publish_report(self) -> None:
        if self.transport is None or not self.transport.connected:
            return  # re-reported on connect
        payload = self.reported_state().model_dump_json().encode()
        try:
            await self.transport.publish(
                self.topics.reported(self.device_id), payload, retain=True, timeout=5
            )
        except MqttError as exc:
            log.info("report not sent (%s); it will be sent on reconnect", exc)

    async def _heartbeat_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self.config.heartbeat_s)
                await self._collect_inference_stats(session)
                if self.transport is None or not self.transport.connected:
                    continue
                presence = Presence(device_id=self.device_id, online=True, at=_now())
                telemetry = {
                    "device_id": self.device_id,
                    "at": _now().isoformat(),
                    "modules": {
                        name: {
                            "status": m.status,
                            "inference_count": m.inference_count,
                            "inference_errors": m.inference_errors,
                            "latency_ms_avg": m.latency_ms_avg,
                        }
                        for name, m in self.modules.items()
                    },
                }
                with contextlib.suppress(MqttError):
                    await self.transport.publish(
                        self.topics.status(self.device_id),
                        presence.model_dump_json().encode(),
                        retain=True,
                        timeout=5,
                    )
                    await self.transport.publish(
                        self.topics.telemetry(self.device_id),
                        json.dumps(telemetry).encode(),
                        qos=0,
                        timeout=5,
                    )

    async def _collect_inference_stats(self, session: aiohttp.ClientSession) -> None:
        changed = False
        for name, running in list(self.executor.running.items()):
            stats = await scrape(session, running.record.internal_port)
            state = self.modules.get(name)
            if stats is None or state is None:
                continue
            update = {
                "inference_count": stats.count,
                "inference_errors": stats.errors,
                "latency_ms_avg": stats.latency_ms_avg,
            }
            if any(getattr(state, k) != v for k, v in update.items()):
                self.modules[name] = state.model_copy(update=update)
                changed = True
        if changed:
            self._report_wanted.set()

    # -- direct methods -----------------------------------------------------------------------

    async def _on_method(self, message: Message, rest: str) -> None:
        assert self.transport is not None
        parts = rest.split("/")
        if len(parts) != 4:
            return
        method, request_id = parts[2], parts[3]
        try:
            request = MethodRequest.model_validate_json(message.payload or b"{}")
        except ValidationError:
            response = MethodResponse(status=400, payload={"error": "malformed method request"})
            request = MethodRequest()
        else:
            response = await self._call_method(method, request.payload)
        topic = request.response_topic or self.topics.method_response(self.device_id, request_id)
        with contextlib.suppress(MqttError):
            await self.transport.publish(topic, response.model_dump_json().encode(), qos=1)

    async def _call_method(self, method: str, payload: dict[str, Any]) -> MethodResponse:
        if method == "ping":
            return MethodResponse(
                status=200, payload={"pong": True, "deviceId": self.device_id, "at": _now().isoformat()}
            )
        if method == "getState":
            return MethodResponse(status=200, payload=json.loads(self.reported_state().model_dump_json()))
        module = payload.get("module")
        if method in ("restartModule", "getLogs"):
            if not isinstance(module, str) or module not in self.executor.running:
                return MethodResponse(status=404, payload={"error": f"no running module {module!r}"})
            if method == "getLogs":
                tail = payload.get("tail", 100)
                tail = tail if isinstance(tail, int) and 0 < tail <= 10_000 else 100
                return MethodResponse(
                    status=200, payload={"module": module, "lines": self.runtime.logs(module, tail)}
                )
            try:
                await self.executor.restart(module)
            except ModelfleetError as exc:
                return MethodResponse(status=500, payload={"error": str(exc)})
            return MethodResponse(status=200, payload={"module": module, "restarted": True})
        return MethodResponse(status=404, payload={"error": f"unknown method {method!r}"})

    # -- local status endpoint ----------------------------------------------------------------

    async def _start_status_endpoint(self) -> None:
        port = self.config.effective_status_port
        if port == 0:
            return

        async def status(_: web.Request) -> web.Response:
            return web.json_response(json.loads(self.reported_state().model_dump_json()))

        app = web.Application()
        app.router.add_get("/status", status)
        self._status_runner = web.AppRunner(app, access_log=None)
        await self._status_runner.setup()
        try:
            await web.TCPSite(self._status_runner, "127.0.0.1", port).start()
        except OSError as exc:
            await self._status_runner.cleanup()
            self._status_runner = None
            raise ConfigError(f"status endpoint cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
