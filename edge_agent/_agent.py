"""The agent: wires its parts and owns their tasks, as IoT Edge's edgeAgent does.

observe   the transport's messages -> the intake (documents), sealed keys, direct methods
decide    selection over the accepted documents -> the planner (desired vs actual -> commands)
act       the plan runner drives a module runtime and returns one outcome per command
report    the status book, the only writer of reported state; the heartbeat; the status endpoint

Every part that touches the outside world is injected (`transport`, `registry`, `runtime`) and the
defaults build the real ones, so the same decisions run against Mosquitto and real processes, a
simulated fleet, or the fakes of a unit test. The agent keeps serving what it last applied
whatever happens upstream: a broker that is down, a registry that is unreachable, a document that
is refused.

Persisted state (`state.json`) has one writer per agent (`StateWriter`): snapshots are taken on
the loop and written, in order, in a thread, so no agent holds the loop on fsync. When it is on
disk, and what a crash in between loses:
- what a message changed (a document and its floor, a deletion, sealed keys) is written before
  `on_message` returns, so the next message is judged against floors a crash cannot take back;
  a crash before that loses a document nothing was derived from yet (the broker redelivers it);
- a reconcile pass writes once, at its end and before pruning (no blob goes while the file still
  names it), plus before each command whose predecessors' outcomes are not on disk yet: a crash
  during a long start never loses the record of a module started earlier in the pass. A crash
  during a start loses only that start's record; the next agent reaps the process as a stray;
- a direct method's request id is written before the method runs (replays stay refused);
- a report is published only after the state it describes is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError

from edge_agent._config import AgentConfig
from edge_agent._control_plane import default_transport
from edge_agent._device_info import device_info
from edge_agent._heartbeat import Heartbeat
from edge_agent._intake import Accepted, Cleared, Deleted, Intake, Refused, Unchanged
from edge_agent._leftovers import twin_dir
from edge_agent._methods import DirectMethods
from edge_agent._module_runtime import ModuleRuntime
from edge_agent._plan_runner import Applied, Failed, Outcome, PlanRunner, Removed
from edge_agent._planner import (
    ActualModule,
    DesiredModule,
    Remove,
    Replace,
    Start,
    Unsupported,
    desired_modules,
    plan,
)
from edge_agent._runtime_on_first_use import RuntimeOnFirstUse
from edge_agent._sealed_keys import KeysChanged, KeysCleared, KeysRefused, SealedKeys
from edge_agent._state import Failure, InstanceRecord, PersistedState, StateFile, StateWriter
from edge_agent._status_book import Clock, StatusBook, judge_deployments, now
from edge_agent._status_endpoint import StatusEndpoint
from modules import ConfigError
from modules.deployment import DeviceFacts, Selection, document_identity
from modules.device_state import ModuleState, Presence, ReportedState
from modules.service_keys import DEVICE_KEY_FILE, open_device_key
from modules.signing import load_public_key
from modules.tasks import cancel_within
from modules.topics import FleetTopics
from modules.transport import Message, Transport, TransportConnectError, TransportError

if TYPE_CHECKING:  # loaded with the first document or module, not at start (docs/agent.md, Footprint)
    from edge_agent._executor import RegistryFactory
    from edge_agent._store import ArtifactStore
    from modules.deployment import DeploymentDocument
    from modules.scoring import twin

log = logging.getLogger("modelfleet.agent")
_STOP_GRACE_S = 10.0
# A burst of state changes (a module starting: downloading, starting, running) is one report.
_REPORT_COALESCE_S = 0.1
# While a reconcile pass runs, its intermediate states wait for its end, up to this long: a pass
# that finishes quickly is one report instead of three, which a fleet of thousands on one broker
# notices; a slow download still shows as `downloading` after this long.
_REPORT_HOLD_S = 1.0


def _default_runtime(config: AgentConfig, registry: RegistryFactory | None) -> ModuleRuntime:
    """Modules from the artifact store, run as supervised processes behind front proxies."""
    from edge_agent._executor import Executor
    from edge_agent._runtime import ProcessRuntime
    from edge_agent._store import ArtifactStore

    data = config.data_dir
    store = ArtifactStore(data / "store", reserve_bytes=config.reserve_bytes)
    processes = ProcessRuntime(data / "runtime", module_limits=config.module_limits)
    return Executor(config, store, processes, registry)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport | None = None,
        registry: RegistryFactory | None = None,
        runtime: ModuleRuntime | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`transport`: the control plane (default: MQTT to `config.hub`, with a last will);
        `registry`: opens registry sessions for the default runtime; `runtime`: what runs
        modules (default: supervised processes from the artifact store); `clock`: the device's
        time for everything it reports and every expiry and retry it judges (default: the
        system clock; the simulator gives devices a skewed one)."""
        self.clock: Clock = clock or now
        self.config = config
        self.topics = FleetTopics(config.fleet)
        self.device_id = config.device_id
        data = config.data_dir
        self.state_file = StateFile(data / "state.json")
        self.persisted = PersistedState()
        self._writer = StateWriter(self.state_file, lambda: self.persisted)
        # id(raw) -> (raw, its document): stored documents are validated once, not every pass
        self._parsed: dict[int, tuple[dict[str, Any], DeploymentDocument]] = {}
        self.intake = Intake(
            self.topics,
            self.device_id,
            self._trusted_keys(),
            max_payload_bytes=config.max_payload_bytes,
            denied_env=config.deny_env,
        )
        # the public key now; the private one when the first sealed box is opened
        self.device_key = open_device_key(data / DEVICE_KEY_FILE)
        self.keys = SealedKeys(
            self.device_key, self.intake.trusted, fleet=config.fleet, device_id=self.device_id
        )
        self.book = StatusBook(self.device_id, config.fleet, config.tags, self._want_report, self.clock)
        if runtime is None:
            runtime = RuntimeOnFirstUse(lambda: _default_runtime(config, registry), data)
        self.runtime: ModuleRuntime = runtime
        self.runtime.bind(self._on_module_state, self.keys.keys_for, self._on_download)
        outcomes_first = cast(ModuleRuntime, _OutcomesFirst(self.runtime, self._write_outcomes))
        self.runner = PlanRunner(outcomes_first, self._record_outcome)
        self._outcomes_unwritten = False
        self.transport: Transport = transport or self._default_transport()
        self.methods = DirectMethods(
            self.device_id,
            self.topics,
            self.runtime,
            self.reported_state,
            self.intake.trusted,
            on_refused=lambda topic, reason: self.book.refusal(topic, reason),
            on_seen=self._writer.write_now,  # a request id is durable before the request runs
            clock=self.clock,
        )
        self.heartbeat = Heartbeat(
            self.topics,
            self.book,
            self.runtime,
            self.transport,
            config.heartbeat_s,
            self.keys.keys_for,
            before_beat=self.collect_reported_properties,
            clock=self.clock,
        )
        self.status_endpoint = StatusEndpoint(config.effective_status_port, self.reported_state)
        self.keys.restore(self.persisted.sealed_keys, self.persisted.keys_versions)
        self.methods.restore(self.persisted.seen_requests)
        self.providers: list[str] = []
        # module -> what identified its reported.json when last read (`twin.reported_key`)
        self._reported_seen: dict[str, tuple[int, int, int] | None] = {}
        # twin folder -> the desired properties this process last wrote there
        self._twins_written: dict[Path, dict[str, Any]] = {}
        # names of the twin folders on disk; None until the first pass has looked
        self._twin_folders: set[str] | None = None
        self._pass_done = asyncio.Event()
        self._pass_done.set()
        self._reconcile_wanted = asyncio.Event()
        self._report_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.reconciled = asyncio.Event()  # set after every reconcile pass (tests and `agent run --once`)

    # -- views kept for callers that read the agent directly -----------------------------------

    @property
    def modules(self) -> dict[str, ModuleState]:
        return self.book.modules

    @property
    def deployments(self) -> dict[str, Any]:
        return self.book.deployments

    @property
    def refused(self) -> Any:
        return self.book.refused

    @property
    def executor(self) -> ModuleRuntime:
        return self.runtime

    @property
    def store(self) -> ArtifactStore:
        from edge_agent._executor import Executor

        runtime = self.runtime.real() if isinstance(self.runtime, RuntimeOnFirstUse) else self.runtime
        if not isinstance(runtime, Executor):
            raise AttributeError("this agent's runtime keeps no artifact store")
        return runtime.store

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

    def _default_transport(self) -> Transport:
        will = Presence(device_id=self.device_id, online=False).model_dump_json().encode()
        return default_transport(self.config, (self.topics.status(self.device_id), will, True))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_state()
        for name, failure in self.persisted.failures.items():
            self.book.modules.setdefault(
                name, ModuleState(name=name, status="failed", last_error=failure.reason)
            )
        for record in list(self.persisted.modules.values()):
            new = await self.runtime.readopt(record)
            if new is None:
                del self.persisted.modules[record.module]
            else:
                self.persisted.modules[record.module] = new
        await self.runtime.reap_strays()
        self._writer.mark()
        await self.flush()
        for topic in (
            self.topics.all_deployments,
            self.topics.desired(self.device_id),
            self.topics.method_requests(self.device_id),
            self.topics.all_keys(self.device_id),
        ):
            self.transport.subscribe(topic)
        self.transport.on_connect(self._on_connect)
        self.providers = await self.runtime.execution_providers()
        await self.status_endpoint.start()
        self._spawn(self._connect_loop(), "transport-connect")
        self._spawn(self._message_loop(), "messages")
        self._spawn(self._reconcile_loop(), "reconcile")
        self._spawn(self._report_loop(), "report")
        self._spawn(self.heartbeat.run(), "heartbeat")
        self._reconcile_wanted.set()

    def _load_state(self) -> None:
        """Read the state file and hand each part the mappings of it that it owns."""
        self.persisted = self.state_file.load()
        self._floors_by_identity()
        self.keys.restore(self.persisted.sealed_keys, self.persisted.keys_versions)
        self.methods.restore(self.persisted.seen_requests)

    def _floors_by_identity(self) -> None:
        """State files before signed deletions kept an override's floor under its topic slot."""
        floors = self.persisted.last_versions
        for slot, raw in self.persisted.documents.items():
            if slot.startswith("device:") and slot in floors and isinstance(raw.get("name"), str):
                identity = document_identity(raw["name"], raw.get("device"))
                floors[identity] = max(floors.get(identity, 0), floors.pop(slot))

    async def _connect_loop(self) -> None:
        """First connection; the transport reconnects by itself afterwards. The agent serves
        what it has meanwhile."""
        delay = 1.0
        while True:
            try:
                await self.transport.start()
                return
            except TransportConnectError as exc:
                log.warning("control plane unreachable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        self._stopping.set()
        # Bounded: a task that ignores its cancellation must not keep the agent from stopping.
        for task in await cancel_within(self._tasks, _STOP_GRACE_S):
            log.error("task %s did not stop within %.0f s; leaving it", task.get_name(), _STOP_GRACE_S)
        self._tasks.clear()
        await self.runtime.shutdown()
        with contextlib.suppress(TransportError):
            offline = Presence(device_id=self.device_id, online=False, at=self.clock())
            await self.transport.publish(
                self.topics.status(self.device_id), offline.model_dump_json().encode(), retain=True, timeout=2
            )
        await self.transport.stop()
        await self.status_endpoint.stop()
        self.persisted.modules.clear()
        self._writer.mark()
        await self.flush()

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
        online = Presence(device_id=self.device_id, online=True, at=self.clock())
        await self.transport.publish(
            self.topics.status(self.device_id), online.model_dump_json().encode(), retain=True
        )
        self._report_wanted.set()

    async def _message_loop(self) -> None:
        async for message in self.transport.messages():
            try:
                await self.on_message(message)
            except Exception:
                log.exception("could not handle a message on %s", message.topic)

    async def on_message(self, message: Message) -> None:
        """Route one control-plane message to the part that owns its topic. What it changed in
        the persisted state (a document and its floor, keys) is on disk when this returns: the
        next message is judged against floors that a crash cannot take back."""
        if message.oversized is not None:
            limit = self.config.max_payload_bytes
            reason = f"payload of {message.oversized} bytes is above the limit of {limit}; dropped unread"
            log.warning("refused a message on %s: %s", message.topic, reason)
            self.book.refusal(message.topic, reason)
            return
        parsed = self.topics.parse_device_topic(message.topic)
        if parsed is not None and parsed[0] == self.device_id:
            rest = parsed[1]
            if rest.startswith("methods/req/"):
                await self.methods.answer(self.transport, message, rest)
                return
            if rest.startswith("keys/"):
                self._on_keys(message, rest[len("keys/") :])
                await self.flush()
                return
        self._on_document(message)
        await self.flush()

    def _on_document(self, message: Message) -> None:
        slot, verdict = self.intake.evaluate(
            message.topic, message.payload, self.persisted.documents, self.persisted.last_versions
        )
        if isinstance(verdict, Unchanged):
            return
        if isinstance(verdict, Refused):
            log.warning("refused document on %s: %s", message.topic, verdict.reason)
            self.book.refusal(message.topic, verdict.reason, verdict.name, verdict.version)
            return
        assert slot is not None
        if isinstance(verdict, Cleared):
            if slot in self.persisted.documents:
                log.warning("the retained document on %s was cleared without a signed delete", message.topic)
                reason = "cleared on the broker without a signed delete; still applied"
                self.book.refusal(message.topic, reason, slot)
            return
        if isinstance(verdict, Deleted):
            self.persisted.last_versions[verdict.identity] = verdict.version
            removed = self.persisted.documents.pop(slot, None)
            if removed is not None:
                self.persisted.applied_documents.pop(slot, None)
                name = removed.get("name")
                applied = self.persisted.applied_documents.get(name) if isinstance(name, str) else None
                if applied is not None and applied.get("device") == removed.get("device"):
                    self.persisted.applied_documents.pop(name, None)  # stored by name when applied
                self.book.deployment_removed(slot, verdict.version)
                log.info("deployment %s removed by a signed delete (version %d)", slot, verdict.version)
        elif isinstance(verdict, Accepted):
            self.persisted.documents[slot] = verdict.raw
            self.persisted.last_versions[verdict.identity] = verdict.document.version
            self._parsed[id(verdict.raw)] = (verdict.raw, verdict.document)
            log.info("accepted %s version %d (key %s)", slot, verdict.document.version, verdict.key_id)
        self._writer.mark()  # on disk before `on_message` returns
        self._reconcile_wanted.set()

    def _on_keys(self, message: Message, name: str) -> None:
        change = self.keys.receive(name, message.payload, max_bytes=self.config.max_payload_bytes)
        if change is None:
            return
        if isinstance(change, KeysRefused):
            log.warning("refused keys for %s: %s", name, change.reason)
            self.book.refusal(message.topic, change.reason, name)
            return
        if isinstance(change, KeysCleared):
            log.warning("the keys of %s were cleared on the broker without a signed delete", name)
            self.book.refusal(message.topic, "keys cleared on the broker without a signed delete; kept", name)
            return
        self._writer.mark()  # the sealed form only: the plaintext exists only in memory
        if isinstance(change, KeysChanged) and change.version is not None:
            log.info("scoring keys for %s updated (version %d)", name, change.version)
        self._reconcile_wanted.set()

    # -- decide + act -------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            # A transient failure is retried when its time comes, with no new document needed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wanted.wait(), self._seconds_to_next_retry())
            self._reconcile_wanted.clear()
            self._pass_done.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; the running modules are untouched")
            finally:
                self._pass_done.set()
            self.reconciled.set()

    def _documents(self) -> dict[tuple[str, int], tuple[DeploymentDocument, dict[str, Any]]]:
        """(name, version) -> the document and its raw signed form, as received.

        A stored raw document never changes (a new version is a new dict), so each is validated
        once: when the intake accepted it, or on the first pass after a restart. The cache is
        keyed by the dict's identity and holds the dict, so an id is never reused under it."""
        docs: dict[tuple[str, int], tuple[DeploymentDocument, dict[str, Any]]] = {}
        parsed: dict[int, tuple[dict[str, Any], DeploymentDocument]] = {}
        for source in (self.persisted.applied_documents, self.persisted.documents):
            for raw in source.values():
                known = self._parsed.get(id(raw))
                if known is not None and known[0] is raw:
                    doc = known[1]
                else:
                    from modules.deployment import DeploymentDocument  # with the first document

                    try:
                        doc = DeploymentDocument.model_validate(raw)
                    except ValidationError:
                        continue
                parsed[id(raw)] = (raw, doc)
                docs[(doc.name, doc.version)] = (doc, raw)
        self._parsed = parsed  # only what is stored now
        return docs

    async def reconcile(self) -> None:
        """One pass: selection over the accepted documents, a plan, its outcomes, the verdicts."""
        docs = self._documents()
        facts = DeviceFacts(self.device_id, tags=self.config.tags)
        if docs:
            from modules.deployment import select_deployments

            selection = select_deployments(facts, [doc for doc, _ in docs.values()])
        else:  # nothing received yet: nothing selected, and no document's models loaded
            selection = Selection(None)
        owners = {
            module_name: ref.name
            for ref in selection.applied
            for module_name in docs[(ref.name, ref.version)][0].content.modules
        }
        desired, unsupported = desired_modules(selection.manifest, owners, self.keys.versions())
        # The intake refuses documents whose modules set a denied env name; a layer can still set
        # one through a deep dot path, so the merged result is checked too.
        for name, module in list(desired.items()):
            reason = self.intake.denied_env_reason(name, module.env)
            if reason is not None:
                unsupported.append(Unsupported(name, reason))
                del desired[name]
        # A module that must check keys never serves before its keys arrived (nor is it stopped
        # meanwhile if an older version runs): it waits, reported as pending.
        waiting = {n for n, d in desired.items() if d.auth_required and d.keys_version is None}
        for name in sorted(waiting - set(self.persisted.modules)):
            self.book.module_waiting(name, desired[name].deployment, "waiting for scoring keys")
        ready = {n: d for n, d in desired.items() if n not in waiting}
        actual = {
            name: ActualModule(name, rec.fingerprint, rec.digest, rec.startup_order)
            for name, rec in self.persisted.modules.items()
            if name not in waiting
        }
        at = self.clock()
        failed_before = {
            name: f.fingerprint
            for name, f in self.persisted.failures.items()
            if not (f.transient and f.retry_at is not None and f.retry_at <= at)
        }
        commands = plan(ready, actual, failed_before)
        # Before any start, so a module's init() already sees its twin; never part of the plan.
        await self._write_twins(selection, desired)
        working = {c.desired.deployment for c in commands if hasattr(c, "desired")}
        self.book.deployments_applying(r for r in selection.applied if r.name in working)
        await self.runner.run(commands)
        for name in list(self.persisted.failures):
            if name not in desired:
                del self.persisted.failures[name]
        for name in list(self.book.modules):
            if name not in desired and name not in self.persisted.modules:
                self.book.module_removed(name)  # failed or waiting once, no longer wanted
        await self._remove_twins(set(desired) | set(self.persisted.modules))
        await self.collect_reported_properties()
        failures = {u.name: u.reason for u in unsupported}
        standing = self._standing_failures(desired)
        failures.update({n: f.reason for n, f in standing.items() if not f.transient})
        retrying = {n: _retry_text(f) for n, f in standing.items() if f.transient}
        self._judge(selection, docs, owners, failures, retrying)
        self._writer.mark()
        # On disk before pruning: no blob goes while the file on disk still names it.
        await self.flush()
        self._outcomes_unwritten = False
        # what runs, and what is wanted: partial downloads of a wanted version survive to be resumed
        await self.runtime.prune(
            {rec.digest for rec in self.persisted.modules.values()} | {d.digest for d in desired.values()}
        )
        self._want_report()

    # -- module twins (`modules.scoring.twin`) -------------------------------------------------

    def _twin_root(self) -> Path:
        return self.config.data_dir / "runtime" / "twins"

    async def _write_twins(self, selection: Selection, desired: dict[str, DesiredModule]) -> None:
        """Each desired module's twin desired properties into its folder (a file only where they
        changed): a running module sees them on its next read, with no restart."""
        sections = selection.manifest.modules_content.module_twins if selection.manifest else {}
        wanted: dict[Path, dict[str, Any]] = {}
        for name in desired:
            folder = twin_dir(self.config.data_dir, name)
            if folder is None:
                log.warning("module %r: its name is no folder name; it gets no twin", name)
                continue
            section = sections.get(name)
            properties = dict((section.desired if section is not None else None) or {})
            # What this agent process last wrote there: no thread and no file system call on the
            # loop (a stat waits behind other agents' fsyncs). Written again when the properties
            # change and once per agent start.
            if self._twins_written.get(folder) == properties:
                continue
            wanted[folder] = properties
        if wanted:
            written = await asyncio.to_thread(_write_twins, wanted)
            for folder in written:
                self._twins_written[folder] = wanted[folder]
                if self._twin_folders is not None:
                    self._twin_folders.add(folder.name)

    async def _remove_twins(self, keep: set[str]) -> None:
        """The twin folders of modules that are neither wanted nor running any more."""
        self._reported_seen = {n: k for n, k in self._reported_seen.items() if n in keep}
        if self._twin_folders is not None and self._twin_folders <= keep:
            return  # nothing of ours to remove: no thread hop on every pass
        self._twin_folders = await asyncio.to_thread(_remove_twin_folders, self._twin_root(), keep)
        self._twins_written = {f: w for f, w in self._twins_written.items() if f.name in self._twin_folders}

    async def collect_reported_properties(self) -> None:
        """Each running module's `reported.json` into its reported state; read again only when
        the file changed. A file that is not a JSON object of at most 32 KiB is ignored, logged."""
        folders = {
            name: folder
            for name in self.persisted.modules
            if (folder := twin_dir(self.config.data_dir, name)) is not None
        }
        if not folders:
            return
        from modules.scoring import twin  # with the first module

        seen = dict(self._reported_seen)
        results = await asyncio.to_thread(_read_reported, folders, seen)
        for name, (key, result) in results.items():
            self._reported_seen[name] = key
            if isinstance(result, twin.ReportedRefused):
                log.warning("module %s: reported properties ignored: %s", name, result)
            else:
                self.book.module_reported(name, result)

    def _standing_failures(self, desired: dict[str, DesiredModule]) -> dict[str, Failure]:
        """Modules whose desired configuration is the one that failed: still failed, whether it
        failed in this pass or an earlier one (an older version serving does not make it applied)."""
        return {
            name: failure
            for name, failure in self.persisted.failures.items()
            if name in desired and desired[name].fingerprint == failure.fingerprint
        }

    def _seconds_to_next_retry(self) -> float | None:
        times = [f.retry_at for f in self.persisted.failures.values() if f.transient and f.retry_at]
        if not times:
            return None
        return max(0.0, (min(times) - self.clock()).total_seconds())

    def _record_outcome(self, outcome: Outcome) -> None:
        if isinstance(outcome, Applied):
            self.persisted.modules[outcome.name] = outcome.record
            if self.persisted.failures.pop(outcome.name, None) is not None:
                self.book.error_cleared(outcome.name)
        elif isinstance(outcome, Removed):
            self.persisted.modules.pop(outcome.name, None)
            self.book.module_removed(outcome.name)
        elif isinstance(outcome, Failed):
            reason = outcome.reason
            if outcome.fingerprint is not None:
                failure = self._failure(outcome)
                self.persisted.failures[outcome.name] = failure
                if failure.transient:
                    reason = _retry_text(failure)
            self.book.module_failed(
                outcome.name,
                outcome.deployment,
                reason,
                still_serving=outcome.still_serving and outcome.name in self.persisted.modules,
                retrying=outcome.transient,
            )
        # Written before the next command starts (`_OutcomesFirst`), or with the end of the pass.
        self._writer.mark()
        self._outcomes_unwritten = True

    def _failure(self, outcome: Failed) -> Failure:
        """The failure record, with the next attempt's time when time can fix it: the delay
        doubles for each consecutive failure of the same configuration."""
        assert outcome.fingerprint is not None
        previous = self.persisted.failures.get(outcome.name)
        attempts = 1
        if previous is not None and previous.fingerprint == outcome.fingerprint:
            attempts = previous.attempts + 1
        retry_at = None
        if outcome.transient:
            delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** min(attempts - 1, 30))
            retry_at = self.clock() + timedelta(seconds=delay)
        return Failure(
            fingerprint=outcome.fingerprint,
            reason=outcome.reason,
            transient=outcome.transient,
            attempts=attempts,
            retry_at=retry_at,
        )

    def _judge(
        self,
        selection: Selection,
        docs: dict[tuple[str, int], tuple[DeploymentDocument, dict[str, Any]]],
        owners: dict[str, str],
        failures: dict[str, str],
        retrying: dict[str, str],
    ) -> None:
        selected = {ref.name for ref in selection.applied} | {ref.name for ref in selection.deferred}
        others = {
            slot: (raw.get("name", slot), int(raw.get("version", 0)))
            for slot, raw in self.persisted.documents.items()
            if raw.get("name", slot) not in selected
        }
        states = judge_deployments(
            selection.applied, selection.deferred, others.values(), owners, failures, retrying, self.clock
        )
        # A document deleted (by a signed tombstone) while this pass ran is judged by the next
        # pass, not resurrected by this one: neither its verdict nor its applied copy stays.
        current = {(raw.get("name"), raw.get("version")) for raw in self.persisted.documents.values()}
        states = [state for state in states if (state.name, state.version) in current]
        self.book.deployments_judged(states)
        for state in states:
            if state.outcome == "applied":
                self.persisted.applied_documents[state.name] = docs[(state.name, state.version)][1]
        for slot in others:
            self.persisted.applied_documents.pop(slot, None)

    def _on_download(self, name: str, digest: str, done: int, total: int) -> None:
        record = self.persisted.modules.get(name)
        self.book.download_progress(name, record.deployment if record else None, digest, done, total)

    def _on_module_state(self, name: str, state: ModuleState) -> None:
        failure = self.persisted.failures.get(name)
        self.book.module_changed(name, state, failure.reason if failure else None)
        record = self.persisted.modules.get(name)
        if record is not None and state.pid and record.pid != state.pid and state.digest == record.digest:
            self.persisted.modules[name] = record.model_copy(update={"pid": state.pid})
            self._writer.changed()

    async def flush(self) -> None:
        """Return once every change to the persisted state made so far is on disk."""
        await self._writer.flush()

    async def _write_outcomes(self) -> None:
        """Before a command: the outcomes of the commands before it are on disk. A crash during
        a long start must not lose the record of a module started earlier in the same pass (the
        next agent could not re-adopt it, and would reap it as a stray)."""
        if not self._outcomes_unwritten:
            return
        try:
            await self.flush()
            self._outcomes_unwritten = False
        except Exception:
            # the disk refuses: the command still runs (the module's own fate must not hang on
            # the state file); the end of the pass tries again and fails the pass if it must
            log.exception("could not write the agent state before the next command")

    # -- report -------------------------------------------------------------------------------

    def _want_report(self) -> None:
        self._report_wanted.set()

    def reported_state(self) -> ReportedState:
        return self.book.reported(device_info(self.config.data_dir, self.providers, self.device_key.public))

    async def _report_loop(self) -> None:
        while True:
            await self._report_wanted.wait()
            await asyncio.sleep(_REPORT_COALESCE_S)
            if not self._pass_done.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_REPORT_HOLD_S):
                        await self._pass_done.wait()
            self._report_wanted.clear()
            # Never report what a crash could still take back (a version applied whose floor
            # is not on disk yet). A disk that refuses is logged where the write failed; the
            # device still says what it runs.
            with contextlib.suppress(Exception):
                await self.flush()
            await self.publish_report()

    async def publish_report(self) -> None:
        if not self.transport.connected:
            return  # re-reported on connect
        payload = self.reported_state().model_dump_json().encode()
        try:
            await self.transport.publish(
                self.topics.reported(self.device_id), payload, retain=True, timeout=5
            )
        except TransportError as exc:
            log.info("report not sent (%s); it will be sent on reconnect", exc)


class _OutcomesFirst:
    """The module runtime as the plan runner sees it: each command first waits until the
    outcomes of the commands before it are on disk (`before`), then runs on the real runtime.

    So a pass writes the state once when it has one command (at its end) and never leaves the
    record of a module it started unwritten while it works on the next one."""

    def __init__(self, runtime: ModuleRuntime, before: Callable[[], Awaitable[None]]) -> None:
        self._runtime = runtime
        self._before = before

    async def start(self, command: Start) -> InstanceRecord:
        await self._before()
        return await self._runtime.start(command)

    async def replace(self, command: Replace) -> InstanceRecord:
        await self._before()
        return await self._runtime.replace(command)

    async def remove(self, command: Remove) -> None:
        await self._before()
        await self._runtime.remove(command)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)


def _write_twins(wanted: dict[Path, dict[str, Any]]) -> list[Path]:
    """The folders whose desired file now holds what was wanted."""
    from modules.scoring import twin  # with the first module

    written: list[Path] = []
    for folder, properties in wanted.items():
        try:
            twin.write_desired(folder, properties)
        except (OSError, TypeError, ValueError) as exc:
            log.error("could not write the twin of module %s: %s", folder.name, exc)
            continue
        written.append(folder)
    return written


def _remove_twin_folders(root: Path, keep: set[str]) -> set[str]:
    """Removes what is not kept; returns the names of the folders left."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return set()
    left: set[str] = set()
    for entry in entries:
        if entry.name in keep:
            left.add(entry.name)
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove the twin folder %s: %s", entry.path, exc)
            left.add(entry.name)
    return left


_FileKey = tuple[int, int, int]


def _read_reported(
    folders: dict[str, Path], seen: dict[str, _FileKey | None]
) -> dict[str, tuple[_FileKey | None, dict[str, Any] | twin.ReportedRefused | None]]:
    """module -> (what identifies its file now, its properties or why not), for changed files only."""
    from modules.scoring import twin

    out: dict[str, tuple[_FileKey | None, dict[str, Any] | twin.ReportedRefused | None]] = {}
    for name, folder in folders.items():
        key = twin.reported_key(folder)
        if name in seen and seen[name] == key:
            continue
        try:
            out[name] = (key, twin.read_reported(folder))
        except twin.ReportedRefused as exc:
            out[name] = (key, exc)
    return out


def _retry_text(failure: Failure) -> str:
    when = failure.retry_at.strftime("%H:%M:%S UTC") if failure.retry_at else "soon"
    return f"{failure.reason}; retrying at {when} (attempt {failure.attempts + 1})"
