"""Module instances as child processes of the agent, each serving the scoring host on its own port.

Children are spawned with `subprocess.Popen` and watched from the event loop through a pidfd
rather than with `asyncio.create_subprocess_exec`: asyncio's subprocess transport kills its child
when it is closed or collected, and a module must outlive an agent restart so the new agent can
adopt it. Output still flows through a pipe read by the event loop into the module's log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent._leftovers import find_strays, proc_cmdline, proc_state
from modules.spec import Resources
from modules.tasks import cancel_and_wait

from . import _limits as limits
from ._config import InstanceConfig, keys_json, settings_json
from ._errors import ModuleStartError
from ._logs import InstanceOutput, RotatingLog, tail_lines
from ._readiness import HttpChecks
from ._venv import EnvBuilder

if TYPE_CHECKING:  # imported where first needed: an agent whose modules have no limits never loads it
    from . import _cgroup as cgroups

log = logging.getLogger("modelfleet.agent.runtime")

# The exit status of a process that is not our child cannot be read; this stands for "unknown".
UNKNOWN_EXIT_CODE = 255
_RECENT_LINES = 40
_REASON_LINES = 15
_POLL_S = 0.1
_ADOPTED_POLL_S = 0.25
# How often an instance's output file is moved into its module's log.
_COLLECT_PERIOD_S = 0.5


class Instance:
    """A running (or finished) module instance: our own child, or one adopted after a restart."""

    def __init__(
        self,
        config: InstanceConfig,
        pid: int,
        started_at: datetime,
        *,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.config = config
        self.pid = pid
        self.started_at = started_at
        self.adopted = popen is None
        self.recent: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)
        self._popen = popen
        self._returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self.pump_task: asyncio.Task[None] | None = None  # collects its output file
        self.output: InstanceOutput | None = None
        self.cgroup: cgroups.ModuleGroup | None = None  # its own cgroup, where it has one
        self._oom_kills: int | None = None  # the group's OOM kill count, read as it exited

    def __repr__(self) -> str:
        return f"<Instance {self.config.instance_id} pid={self.pid} returncode={self.returncode}>"

    @property
    def returncode(self) -> int | None:
        """None while running; negative -N when killed by signal N, as subprocess reports it."""
        if self._returncode is None and self.adopted and not _alive(self.pid, self.config.instance_id):
            self._set_exit(UNKNOWN_EXIT_CODE)
        return self._returncode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def _watch(self) -> None:
        """Learn of our child's exit from the event loop: pidfd when the kernel has it, else polling."""
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._poller = loop.create_task(self._poll_child(), name=f"watch-{self.config.instance_id}")
            return
        loop.add_reader(self._pidfd, self._on_pidfd)

    def _on_pidfd(self) -> None:
        assert self._pidfd is not None and self._popen is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._set_exit(self._popen.wait())

    async def _poll_child(self) -> None:
        assert self._popen is not None
        while (code := self._popen.poll()) is None:
            await asyncio.sleep(_POLL_S)
        self._set_exit(code)

    def _set_exit(self, code: int) -> None:
        if self._returncode is None:
            self._returncode = code
            if self.cgroup is not None:
                # Read before the group goes; it goes at once unless a straggler still sits in
                # it (then stop() or the next start-up sweep removes it).
                self._oom_kills = self.cgroup.oom_kills()
                self.cgroup.remove()
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self._returncode)

    async def wait(self) -> int:
        """Until the process exits; its exit code (UNKNOWN_EXIT_CODE for an adopted one)."""
        if self.adopted:
            while self.returncode is None:
                await asyncio.sleep(_ADOPTED_POLL_S)
            assert self._returncode is not None
            return self._returncode
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    def oom_reason(self, code: int) -> str | None:
        """Why the instance ended, when the kernel's OOM killer ended it at its cgroup's limit.

        SIGKILL is how our own child dies of it; an adopted one's exit status cannot be read, so
        its group's count alone decides."""
        if not limits.kernel_memory(self.cgroup) or (code != -signal.SIGKILL and not self.adopted):
            return None
        assert self.cgroup is not None
        kills = self._oom_kills if self._oom_kills is not None else self.cgroup.oom_kills()
        return self.cgroup.oom_reason() if kills > 0 else None

    def release_cgroup(self) -> None:
        """Remove its cgroup (best effort: the kernel keeps one that still holds a process)."""
        if self.cgroup is not None:
            self.cgroup.remove()

    def reason(self, lines: int = _REASON_LINES) -> str:
        if self.output is not None:
            self.output.collect()  # what it wrote just before failing
        return "\n".join(list(self.recent)[-lines:])


_proc_stat_state = proc_state
_cmdline = proc_cmdline


def _settings_marker(instance_id: str) -> str:
    return f"/instances/{instance_id}/settings.json"


def _is_instance(pid: int, instance_id: str) -> bool:
    """The pid runs our scoring host for exactly this instance (not a reused pid, not a sibling)."""
    marker = _settings_marker(instance_id)
    return any(arg.endswith(marker) for arg in _cmdline(pid))


def _alive(pid: int, instance_id: str) -> bool:
    state = _proc_stat_state(pid)
    return state is not None and state not in ("Z", "X") and _is_instance(pid, instance_id)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for a group of zombies only; those are as good as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _module_cgroup(pid: int) -> cgroups.ModuleGroup | None:
    """The cgroup an earlier agent made for this module, if it is in one."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    if "/module-" not in text:
        return None
    from . import _cgroup as cgroups

    return cgroups.find(pid, cgroup_text=text)


def _started_at_of(pid: int) -> datetime:
    """When a process we did not start began, from /proc; now if that cannot be read."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime"))
        return datetime.fromtimestamp(boot + start_ticks / os.sysconf("SC_CLK_TCK"), UTC)
    except (OSError, ValueError, IndexError, StopIteration):
        return datetime.now(UTC)


class ProcessRuntime(HttpChecks):
    """Starts, stops, checks and adopts module instances; keeps their logs and environments.

    Layout under `data_dir`: `instances/<id>/settings.json` (private: it holds the keys),
    `logs/<module>.log*`, `envs/<hash>/`.

    `module_limits` picks what enforces a module's `resources`: "auto" its own cgroup where the
    agent may make one, else the runtime's rlimit enforcement; "cgroup" a cgroup or the module
    fails to start; "rlimit" the runtime's enforcement only.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str = sys.executable,
        log_max_bytes: int = 5 * 1024 * 1024,
        log_backups: int = 3,
        module_limits: limits.ModuleLimits = "auto",
    ) -> None:
        if module_limits not in ("auto", "cgroup", "rlimit"):
            raise ValueError(f"module_limits is auto, cgroup or rlimit, not {module_limits!r}")
        self.data_dir = data_dir
        self.module_limits = module_limits
        self._cgroups: cgroups.Controllers | None = None
        self._no_cgroups: str | None = None  # why modules get the rlimit enforcement
        self.python = python
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self._logs: dict[str, RotatingLog] = {}
        self._envs = EnvBuilder(data_dir / "envs", python=python)
        self._pumps: set[asyncio.Task[None]] = set()

    # -- logs -------------------------------------------------------------------------------

    def module_log(self, module: str) -> RotatingLog:
        current = self._logs.get(module)
        if current is None:
            path = self.data_dir / "logs" / f"{module}.log"
            current = RotatingLog(path, max_bytes=self.log_max_bytes, backups=self.log_backups)
            self._logs[module] = current
        return current

    def logs(self, module: str, tail: int = 100) -> list[str]:
        """The module's last `tail` output lines, oldest first, across rotated files."""
        return tail_lines(self.module_log(module).files(), tail)

    # -- environments -----------------------------------------------------------------------

    async def ensure_env(self, requirements: list[str]) -> str:
        """The interpreter to run a module with these extra requirements (built once per set)."""
        return await self._envs.ensure(requirements)

    # -- limits -----------------------------------------------------------------------------

    def _controllers(self) -> cgroups.Controllers | None:
        """Where module cgroups go; found at the first module with limits, then kept."""
        if self.module_limits == "rlimit":
            return None
        if self._cgroups is None and self._no_cgroups is None:
            from . import _cgroup as cgroups

            try:
                self._cgroups = cgroups.for_this_process()
                log.info("module limits: %s", self._cgroups.describe())
            except cgroups.CgroupUnavailable as exc:
                self._no_cgroups = str(exc)
                if self.module_limits == "auto":
                    log.warning("module limits by rlimits, not cgroups: %s", exc)
        return self._cgroups

    def describe_limits(self, resources: Resources | None) -> str | None:
        """What will hold a module with these `resources`, before it starts (its instance's
        `limits` then says what did)."""
        if resources is None or (resources.memory_mb is None and resources.cpus is None):
            return None
        found = self._controllers()
        if found is None:
            return limits.describe(resources)
        from . import _cgroup as cgroups

        planned = cgroups.ModuleGroup(found.version, found.memory, found.cpu)
        planned.memory_mb = resources.memory_mb
        planned.cpus = resources.cpus if found.cpu is not None else None
        return limits.describe(resources, planned)

    def _module_group(self, instance_id: str, resources: Resources | None) -> cgroups.ModuleGroup | None:
        """A new cgroup with the module's limits, or None for the rlimit enforcement."""
        if resources is None or (resources.memory_mb is None and resources.cpus is None):
            return None
        found = self._controllers()
        from . import _cgroup as cgroups

        try:
            if found is None:
                raise cgroups.CgroupUnavailable(self._no_cgroups or "module_limits is rlimit")
            group = found.create(instance_id, resources.memory_mb, resources.cpus)
            if self.module_limits == "cgroup" and resources.cpus is not None and group.cpus is None:
                group.remove()
                raise cgroups.CgroupUnavailable("the cpu controller is not available to the agent")
            return group
        except cgroups.CgroupUnavailable as exc:
            if self.module_limits == "cgroup":
                raise ModuleStartError(f"cannot limit {instance_id} by a cgroup: {exc}") from None
            if found is not None:  # a refusal at detection was logged once already
                log.warning("%s limited by rlimits, not a cgroup: %s", instance_id, exc)
            return None

    # -- lifecycle --------------------------------------------------------------------------

    def settings_path(self, instance_id: str) -> Path:
        return self.data_dir / "instances" / instance_id / "settings.json"

    def command(
        self, config: InstanceConfig, python: str | None = None, keys_fd: int | None = None
    ) -> list[str]:
        # The settings path holds the instance id: this is what adopt() looks for in
        # /proc/<pid>/cmdline.
        settings_file = str(self.settings_path(config.instance_id))
        command = [python or self.python, "-m", "modules.scoring", "--settings-file", settings_file]
        if keys_fd is not None:
            command += ["--keys-fd", str(keys_fd)]
        return command

    def _environment(self, config: InstanceConfig) -> dict[str, str]:
        env = dict(os.environ)
        env.update(config.env)
        paths = [str(config.code_dir)] if config.code_dir else []
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        # Keys travel through the keys pipe only; inherited ones would override nothing but
        # would leak into the module's environment.
        env.pop("MODELFLEET_SCORING_PRIMARY_KEY", None)
        env.pop("MODELFLEET_SCORING_SECONDARY_KEY", None)
        return env

    async def start(
        self, config: InstanceConfig, *, python: str | None = None, resources: Resources | None = None
    ) -> Instance:
        """Spawn the scoring host for `config` in its own session; returns once it is spawned."""
        settings_file = self.settings_path(config.instance_id)
        settings_file.parent.mkdir(parents=True, exist_ok=True)
        settings = config.scoring_settings()
        text = settings_json(settings)
        descriptor = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        cwd = config.code_dir or settings_file.parent
        group = self._module_group(config.instance_id, resources)
        keys = keys_json(settings)
        keys_read = None
        if keys is not None:
            # A few hundred bytes: they fit the pipe's buffer, so writing never blocks.
            keys_read, keys_write = os.pipe()
            os.write(keys_write, keys)
            os.close(keys_write)
        output = self.instance_output(config)
        write_fd = output.open_for_child()
        try:
            popen = subprocess.Popen(
                self.command(config, python, keys_read),
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=self._environment(config),
                start_new_session=True,
                close_fds=True,
                pass_fds=() if keys_read is None else (keys_read,),
            )
        except OSError as exc:
            if group is not None:
                group.remove()
            raise ModuleStartError(f"cannot start {config.instance_id}: {exc}") from exc
        finally:
            os.close(write_fd)
            if keys_read is not None:
                os.close(keys_read)
        if group is not None:
            # Moved in just after it started: what it allocates before is not counted, which is
            # harmless (it is still starting Python); its children are all born inside.
            group = self._move_in(config.instance_id, popen, group)
        limits.apply(popen.pid, resources, group)
        instance = Instance(config, popen.pid, datetime.now(UTC), popen=popen)
        instance.cgroup = group
        instance._watch()
        self._collect(instance, output)
        log.info("started %s (pid %d, port %d)", config.instance_id, popen.pid, config.port)
        return instance

    def _move_in(
        self, instance_id: str, popen: subprocess.Popen[bytes], group: cgroups.ModuleGroup
    ) -> cgroups.ModuleGroup | None:
        """The group with the module in it, or None (rlimits) when it cannot be moved in."""
        from . import _cgroup as cgroups

        try:
            group.add(popen.pid)
            return group
        except cgroups.CgroupUnavailable as exc:
            if self.module_limits == "cgroup":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
                group.remove()
                raise ModuleStartError(f"cannot limit {instance_id} by a cgroup: {exc}") from None
            log.warning("%s limited by rlimits, not a cgroup: %s", instance_id, exc)
            group.remove()
            return None

    async def stop(self, instance: Instance, timeout: float = 10.0) -> int:
        """SIGTERM to the instance's process group, SIGKILL to what is left after `timeout`.

        The group goes, not just the host: whatever an entry script started must not outlive
        its module.
        """
        pgid = instance.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        code: int | None = None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(instance.wait(), timeout)
        if code is None:
            log.warning("%s did not stop within %.1fs: killing it", instance.config.instance_id, timeout)
        # Stragglers (children that ignored SIGTERM, or outlived their parent) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if code is None:
            code = await instance.wait()
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        if instance.pump_task is not None:
            await cancel_and_wait(instance.pump_task)
        if not _group_alive(pgid) and instance.output is not None:
            await asyncio.to_thread(instance.output.finish)  # the last log lines
        if not _group_alive(pgid):
            # Nothing left that could be adopted: the private settings (keys) go with it, and
            # its cgroup.
            instance.release_cgroup()
            folder = self.settings_path(instance.config.instance_id).parent
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
        log.info("stopped %s (exit %d)", instance.config.instance_id, code)
        return code

    def adopt(self, instance_id: str, pid: int, config: InstanceConfig) -> Instance | None:
        """A handle on an instance started by an earlier agent, or None when the pid is not it."""
        if config.instance_id != instance_id or not _alive(pid, instance_id):
            return None
        instance = Instance(config, pid, _started_at_of(pid))
        # It stays in the group the earlier agent made for it: found again, its OOM is reported.
        instance.cgroup = _module_cgroup(pid)
        # what it printed while no agent was there waits in its file
        self._collect(instance, self.instance_output(config))
        return instance

    def instance_output(self, config: InstanceConfig) -> InstanceOutput:
        path = self.data_dir / "logs" / f"{config.instance_id}.out"
        return InstanceOutput(path, self.module_log(config.module), collections.deque(maxlen=_RECENT_LINES))

    def _collect(self, instance: Instance, output: InstanceOutput) -> None:
        output.recent = instance.recent
        instance.output = output
        task = asyncio.get_running_loop().create_task(
            output.run(_COLLECT_PERIOD_S), name=f"log-{instance.config.instance_id}"
        )
        instance.pump_task = task
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    def strays(self, keep: set[int]) -> list[int]:
        """Scoring hosts of this runtime's instances (their settings file is under this data dir)
        that no instance record accounts for: what a crash between starting an instance and
        recording it, or a lost state file, would leave serving for ever."""
        return find_strays(self.data_dir, keep)

    async def reap(self, pid: int, timeout: float = 10.0) -> None:
        """End a stray instance's process group: SIGTERM, then SIGKILL after `timeout`."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _proc_stat_state(pid) not in (None, "Z", "X") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    async def close(self) -> None:
        """Stop watching (builds, log pumps) without stopping the modules: a new agent adopts them."""
        await self._envs.close()
        await cancel_and_wait(*self._pumps)
        for module_log in self._logs.values():
            module_log.close()
