"""README.md's console blocks, executed, so the README cannot drift from what works.

- "The quick start, by hand" runs command by command, in order, in ONE bash session (so `cd`, `&`
  jobs and the environment carry over) inside a temporary folder laid out like the repository
  root. Each command must exit 0, and the lines shown under it must appear, in order, in what it
  printed (stdout and stderr together, as on a terminal); `...` in a shown line matches anything.
- Every `modelfleet ...` command in any console block of README.md and docs/*.md must at least
  parse: `modelfleet <command path> --help` exits 0 and lists every option the line uses.
- Every `make TARGET` line names a target of the Makefile. `make demo` and `make test` are not run:
  `make test` runs this suite (it would recurse) and both install packages.

The only differences from the README's text are in SUBSTITUTIONS and READY_AFTER below, each with
its reason; every other command runs exactly as printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
MODELFLEET = VENV_BIN / "modelfleet"

QUICK_START = "## The quick start, by hand"
SET_UP = "## Set-up: two commands"

# The ports the README relies on: the embedded hub's defaults, the deployment's module port, and
# the agent's status endpoint (its default, which the README's agent keeps).
DEFAULT_PORTS = {"registry": 5000, "mqtt": 1883, "module": 8900, "status": 8780}


@dataclass(frozen=True)
class Substitution:
    readme: str  # text of a README command (the first place it occurs in that command)
    run: str  # what runs instead; {venv}, {venv_bin} and the DEFAULT_PORTS names are filled in
    why: str
    ports: tuple[str, ...] = ()  # only when one of these default ports is taken on this machine
    env: dict[str, str] = field(default_factory=dict)  # exported for the whole session when used


# fmt: off
SUBSTITUTIONS = (
    Substitution(
        "python3 -m venv .venv && .venv/bin/pip install -e '.[cpu]'", ":",
        why="installing again takes minutes: the session uses the venv running this test, which has "
            "modelfleet installed (editable) already",
    ),
    Substitution(
        "source .venv/bin/activate", 'export VIRTUAL_ENV={venv} PATH={venv_bin}:"$PATH"',
        why="what `activate` does, for that same venv",
    ),
    # The next ones apply only when a default port is taken on this machine (another service, a
    # concurrent run): then a free port takes its place, consistently, in every command and in the
    # MODELFLEET_REGISTRY / MODELFLEET_HUB variables that the publisher and the agent both read.
    # When the ports are free (the usual case) the commands run exactly as printed.
    Substitution(
        "modelfleet hub up --data-dir .hub",
        "modelfleet hub up --data-dir .hub --registry-port {registry} --mqtt-port {mqtt}",
        why="the hub's default ports are taken here",
        ports=("registry", "mqtt"),
        env={"MODELFLEET_REGISTRY": "http://127.0.0.1:{registry}", "MODELFLEET_HUB": "mqtt://127.0.0.1:{mqtt}"},
    ),
    Substitution("--port 8900", "--port {module}", why="port 8900 is taken here", ports=("module",)),
    Substitution("localhost:8900", "localhost:{module}", why="port 8900 is taken here", ports=("module",)),
    Substitution(
        "modelfleet agent run", "modelfleet agent run --status-port {status}",
        why="the agent's status port 8780 is taken here", ports=("status",),
    ),
)
# fmt: on

# A person takes a few seconds to type the command after a background one; the test instead waits
# until what was started answers (command prefix -> check), so a slow start on a busy machine
# cannot fail the next command. Nothing is skipped or added to the session itself.
READY_TIMEOUT_S = 60.0


def _hub_ready(session: BashSession, command: str) -> str | None:
    # Bound, not connected to: a bare TCP connection would make the broker log a malformed client.
    for name in ("registry", "mqtt"):
        if _port_free(session.ports[name]):
            return f"the hub does not listen on 127.0.0.1:{session.ports[name]} ({name}) yet"
    return None


def _agent_ready(session: BashSession, command: str) -> str | None:
    """The device is online on the broker: `deploy create --wait` counts the devices it hears of."""
    device = re.search(r"--device-id\s+(\S+)", command)
    assert device, f"no --device-id in {command!r}"
    proc = subprocess.run(
        [str(MODELFLEET), "status", "--json"],
        cwd=session.cwd(),
        env=session.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode == 0:
        devices = {d["device_id"]: d for d in json.loads(proc.stdout).get("devices", [])}
        if devices.get(device[1], {}).get("online"):
            return None
    return f"device {device[1]} is not online yet: {(proc.stdout + proc.stderr)[-500:]}"


READY_AFTER: dict[str, Callable[[BashSession, str], str | None]] = {
    "modelfleet hub up": _hub_ready,
    "modelfleet agent run": _agent_ready,
}

# Seconds one command may take. `--wait` drives a rollout; the first one builds the module's venv
# with pip (its requirements.txt), which can take minutes on a cold cache.
COMMAND_TIMEOUT_S = 90
WAIT_TIMEOUT_S = 420


# -- README parsing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    source: Path
    heading: str  # the nearest `#` heading above the block
    line: int  # 1-based line of the block's first content line
    lines: tuple[str, ...]


def console_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    heading = ""
    body: list[str] | None = None
    start = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if body is not None:
            if line.startswith("```"):
                blocks.append(Block(path, heading, start, tuple(body)))
                body = None
            else:
                body.append(line)
        elif line.startswith("```console"):
            body, start = [], number + 1
        elif line.startswith("#"):
            heading = line.strip()
    return blocks


def block_under(heading: str) -> Block:
    found = [b for b in console_blocks(README) if b.heading == heading]
    assert found, f"README.md has no console block under {heading!r}"
    return found[0]


@dataclass
class Step:
    command: str  # continuation lines folded into one line
    line: int
    shown: list[str] = field(default_factory=list)


def _fold(lines: tuple[str, ...], i: int) -> tuple[str, int]:
    """The command starting at lines[i], with `\\` continuations joined; and the next index."""
    text = lines[i]
    while text.endswith("\\") and i + 1 < len(lines):
        i += 1
        text = text[:-1].rstrip() + " " + lines[i].strip()
    return text, i + 1


def session_steps(block: Block) -> list[Step]:
    """`$ ` lines are commands; the lines up to the next `$ ` are what the command shows."""
    steps: list[Step] = []
    i = 0
    while i < len(block.lines):
        line = block.lines[i]
        if line.startswith("$ "):
            command, nxt = _fold(block.lines, i)
            steps.append(Step(command[2:].strip(), block.line + i))
            i = nxt
            continue
        assert steps, f"{block.source.name}:{block.line + i}: output before the first command: {line!r}"
        if line.strip():
            steps[-1].shown.append(line.strip())
        i += 1
    return steps


def block_commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) for each command of a block: its `$ ` lines, or every line when it has none."""
    prompted = any(line.startswith("$ ") for line in block.lines)
    found = []
    i = 0
    while i < len(block.lines):
        line = block.lines[i]
        if (prompted and not line.startswith("$ ")) or not line.strip():
            i += 1
            continue
        command, nxt = _fold(block.lines, i)
        found.append((block.line + i, command.removeprefix("$ ").strip()))
        i = nxt
    return found


def strip_comment(command: str) -> str:
    """The command without a trailing `# comment` (a `#` outside quotes, after a blank)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command.rstrip()


def is_background(command: str) -> bool:
    text = strip_comment(command)
    return text.endswith("&") and not text.endswith("&&")


# -- matching shown output ----------------------------------------------------------------------


def shown_pattern(shown: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in shown.split("...")))


def missing_line(shown: list[str], output: str) -> str | None:
    """The first shown line not found (in order, as a whole line) in the output, or None."""
    lines = [line.strip() for line in output.splitlines()]
    at = 0
    for want in shown:
        pattern = shown_pattern(want)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return want
        at += 1
    return None


def test_shown_output_matching() -> None:
    out = "iris:1  sha256:abc\nuploaded 2.8 KiB in 2 blobs; re-used 1 already in the registry\n"
    assert missing_line(["iris:1  sha256:..."], out) is None
    assert missing_line(["uploaded ... KiB in 2 blobs; re-used 1 already in the registry"], out) is None
    assert missing_line(["iris:2  sha256:..."], out) == "iris:2  sha256:..."
    assert missing_line(["uploaded ...", "iris:1 ..."], out) == "iris:1 ..."  # order matters
    assert missing_line(["iris:1"], out) == "iris:1"  # a whole line, not a prefix


# -- the bash session ---------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie still counts as alive there)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class Result:
    rc: int
    output: str


class BashSession:
    """One `bash` fed the commands on stdin, one at a time; each command's output goes to its own
    file and its exit status to a marker file the test waits for (with a timeout)."""

    def __init__(self, cwd: Path, logs: Path, env: dict[str, str], ports: dict[str, int]) -> None:
        self.logs, self.env, self.ports = logs, env, ports
        logs.mkdir()
        self.background: list[tuple[str, int, Path]] = []  # (command, pid, output)
        self._count = 0
        self._cwd = cwd
        with (logs / "bash.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group: the cleanup kills it whole
            )

    def cwd(self) -> Path:
        return self._cwd

    def run(self, command: str, timeout: float) -> Result:
        self._count += 1
        n = self._count
        out, rc, pid, cwd = (self.logs / f"{n}.{suffix}" for suffix in ("out", "rc", "pid", "cwd"))
        q = shlex.quote
        background = is_background(command)
        # The command on lines of its own, so a trailing `# comment` cannot swallow the braces.
        script = f"{{\n{command}\n}} < /dev/null > {q(str(out))} 2>&1\n"
        script += "__rc=$?\n"
        if background:
            script += f"echo $! > {q(str(pid))}\n"
        script += f"pwd > {q(str(cwd))}\necho $__rc > {q(str(rc))}.tmp && mv {q(str(rc))}.tmp {q(str(rc))}\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"bash exited ({self.proc.returncode}) during {command!r}{self.tails()}", pytrace=False
                )
            if time.monotonic() > deadline:
                text = out.read_text(errors="replace") if out.exists() else ""
                pytest.fail(
                    f"timed out after {timeout:.0f} s: $ {command}\n--- output (tail) ---\n{text[-3000:]}"
                    + self.tails(),
                    pytrace=False,
                )
            time.sleep(0.05)
        self._cwd = Path(cwd.read_text().strip())
        if background:
            self.background.append((command, int(pid.read_text()), out))
        return Result(int(rc.read_text()), out.read_text(errors="replace"))

    def tails(self) -> str:
        """The last lines of every background job's output, for a failure message."""
        parts = []
        for command, pid, out in self.background:
            text = out.read_text(errors="replace") if out.exists() else ""
            state = "running" if _alive(pid) else "exited"
            parts.append(f"\n--- background ({state}): $ {command}\n{text[-2000:]}")
        return "".join(parts)

    def close(self, root: Path) -> None:
        """Stop the background jobs newest first (SIGTERM, as `kill %n`: the agent stops its modules,
        the hub closes), then the whole process group, then anything still running from `root`
        (module processes run in sessions of their own)."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        for _, pid, _ in reversed(self.background):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for pid in _processes_under(root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _processes_under(root: Path) -> list[int]:
    """Our processes whose working folder or command line is inside `root` (Linux; [] elsewhere)."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    needle = str(root)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(needle) or needle in cmdline:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def quick_start_session(tmp_path: Path) -> Iterator[tuple[BashSession, list[Substitution]]]:
    # The README runs from the repository root (`mkdir ws && cd ws`, then `../examples/...`): the
    # temporary root gets `examples/` as a link to the real one.
    root = tmp_path / "repo"
    root.mkdir()
    (root / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    ports = {name: port if _port_free(port) else _free_port() for name, port in DEFAULT_PORTS.items()}
    active = [s for s in SUBSTITUTIONS if not s.ports or any(ports[p] != DEFAULT_PORTS[p] for p in s.ports)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    for sub in active:
        env.update({k: v.format(**ports) for k, v in sub.env.items()})
    session = BashSession(root, tmp_path / "logs", env, ports)
    try:
        yield session, active
    finally:
        session.close(root)


def _substitute(command: str, active: list[Substitution], used: set[str], ports: dict[str, int]) -> str:
    for sub in active:
        if sub.readme in command:
            run = sub.run.format(
                venv=shlex.quote(str(VENV_BIN.parent)), venv_bin=shlex.quote(str(VENV_BIN)), **ports
            )
            command = command.replace(sub.readme, run, 1)
            used.add(sub.readme)
    return command


def _timeout(command: str) -> float:
    return WAIT_TIMEOUT_S if "--wait" in strip_comment(command).split() else COMMAND_TIMEOUT_S


@pytest.mark.timeout(900)
def test_quick_start_runs_as_shown(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the quick start uses curl; install it"
    steps = session_steps(block_under(QUICK_START))
    assert steps, "the quick start has no commands"
    used: set[str] = set()
    with quick_start_session(tmp_path) as (session, active):
        for step in steps:
            command = _substitute(step.command, active, used, session.ports)
            started = time.monotonic()
            result = session.run(command, _timeout(command))
            took = time.monotonic() - started
            where = f"README.md:{step.line}: $ {step.command}"
            if command != step.command:
                where += f"\n(run as: $ {command})"
            if result.rc != 0:
                pytest.fail(
                    f"{where}\nexited {result.rc} after {took:.1f} s\n--- output (tail) ---\n"
                    f"{result.output[-3000:]}{session.tails()}",
                    pytrace=False,
                )
            missing = missing_line(step.shown, result.output)
            if missing is not None:
                pytest.fail(
                    f"{where}\nshows {missing!r}, which is not in its output:\n{result.output[-3000:]}",
                    pytrace=False,
                )
            check = next((c for prefix, c in READY_AFTER.items() if command.startswith(prefix)), None)
            if check is not None and is_background(command):
                deadline = time.monotonic() + READY_TIMEOUT_S
                while (problem := check(session, command)) is not None:
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"{where}\nnot ready after {READY_TIMEOUT_S:.0f} s: {problem}{session.tails()}"
                        )
                    time.sleep(0.3)
    unused = [s.readme for s in active if s.readme not in used]
    assert not unused, f"SUBSTITUTIONS name README text the quick start no longer has: {unused}"


# -- make targets -------------------------------------------------------------------------------


def _make_lines() -> list[tuple[str, int, str]]:
    return [
        (block.source.name, line, command)
        for block in (b for path in DOCS for b in console_blocks(path))
        for line, command in block_commands(block)
        if command.split()[0] == "make"
    ]


def test_set_up_block_names_make_targets() -> None:
    """`make demo` and `make test` are only checked to exist: `make test` runs this suite (running
    it here would recurse) and both install packages, which is the CI job's business."""
    commands = [c for _, c in block_commands(block_under(SET_UP))]
    assert [c.split()[:2] for c in commands] == [["make", "demo"], ["make", "test"]], commands
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))
    for source, line, command in _make_lines():
        target = next((w for w in strip_comment(command).split()[1:] if "=" not in w), None)
        assert target in targets, f"{source}:{line}: `{command}`: the Makefile has no target {target!r}"


# -- every modelfleet command parses ------------------------------------------------------------

_CONTROL = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>&1"}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def modelfleet_lines() -> list[tuple[str, list[str]]]:
    """(where, words after `modelfleet`) for every modelfleet command in a console block."""
    found = []
    for path in DOCS:
        for block in console_blocks(path):
            for line, command in block_commands(block):
                where = f"{path.relative_to(ROOT)}:{line}"
                try:
                    tokens = shlex.split(command, comments=True)
                except ValueError as exc:
                    found.append((where, [f"<unparsable: {exc}>"]))
                    continue
                while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
                    tokens.pop(0)
                if not tokens or Path(tokens[0]).name != "modelfleet":
                    continue
                words = []
                for token in tokens[1:]:
                    if token in _CONTROL:
                        break
                    words.append(token)
                found.append((where, words))
    return found


@cache
def _help(path: tuple[str, ...]) -> tuple[int, str]:
    proc = subprocess.run(
        [str(MODELFLEET), *path, "--help"], capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    return proc.returncode, proc.stdout + proc.stderr


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}


def _subcommands(path: tuple[str, ...], text: str) -> set[str]:
    """The command words argparse (or the top-level dispatcher) lists in a help text."""
    if not path:
        section = text.split("commands:", 1)[1] if "commands:" in text else ""
        return set(re.findall(r"^  (\S+)\s", section, re.M))
    if "positional arguments:" not in text:
        return set()
    section = re.split(r"\n\S", text.split("positional arguments:", 1)[1], maxsplit=1)[0]
    return set(re.findall(r"^ {4}(\S+)", section, re.M))


LINES = modelfleet_lines()


def test_docs_have_modelfleet_commands() -> None:
    assert len(LINES) > 20, LINES  # the parsing above found the blocks


@pytest.mark.parametrize(("where", "words"), LINES, ids=[where for where, _ in LINES])
def test_modelfleet_command_parses(where: str, words: list[str]) -> None:
    """The command path exists (`modelfleet <path> --help` exits 0) and lists every option used.
    Synopsis lines in the docs work too: `list|show` checks both, `[--json]` checks `--json`."""
    assert not (words and words[0].startswith("<unparsable")), f"{where}: {words[0]}"
    paths: list[tuple[str, ...]] = [()]
    rest = list(words)
    while rest and not rest[0].startswith(("-", "[")):
        subs = {p: _subcommands(p, _help(p)[1]) for p in paths}
        if not any(subs.values()):
            break
        word = rest.pop(0)
        extended = []
        for p in paths:
            for alternative in word.split("|"):
                assert alternative in subs[p], (
                    f"{where}: `modelfleet {' '.join((*p, alternative))}`: no such command "
                    f"(`{' '.join(('modelfleet', *p))}` has: {', '.join(sorted(subs[p]))})"
                )
                extended.append((*p, alternative))
        paths = extended
    helps = []
    for p in paths:
        rc, text = _help(p)
        assert rc == 0, f"{where}: `modelfleet {' '.join(p)} --help` exited {rc}:\n{text[-2000:]}"
        helps.append(text)
    for token in rest:
        for part in token.strip("[]").split("|"):
            part = part.strip("[]")
            if not re.match(r"^--?[A-Za-z]", part):
                continue
            option = part.split("=", 1)[0]
            listed = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
            assert any(listed.search(text) for text in helps), (
                f"{where}: `modelfleet {' '.join(paths[0])}` has no option {option} "
                f"(see `modelfleet {' '.join(paths[0])} --help`)"
            )
