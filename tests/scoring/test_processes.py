"""Several worker processes on one port: each runs init(), all stop together, none outlive the parent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from modules.scoring import ScoringSettings

from .conftest import IRIS_DIR, IRIS_SCRIPT, ROOT
from .test_cli import _free_port, _wait_ready


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already exited


def _wait_gone(pids: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {pid for pid in pids if _alive(pid)}
        if not left:
            return left
        time.sleep(0.1)
    return {pid for pid in pids if _alive(pid)}


def _spawn_workers(port: int, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modules.cli",
            "serve",
            "--entry-script",
            str(IRIS_SCRIPT),
            "--model-dir",
            str(IRIS_DIR),
            "--port",
            str(port),
            "--processes",
            str(count),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_answer_on_one_port_and_stop_together_on_sigterm():
    port = _free_port()
    process = _spawn_workers(port, 2)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        workers = _children(process.pid)
        body = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]})
        answers = [requests.post(url + "/score", body, timeout=30) for _ in range(6)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)

    assert len(workers) == 2
    assert all(a.status_code == 200 and a.json()["predictions"] == ["setosa"] for a in answers)
    assert process.returncode == 0
    assert "with 2 worker processes" in stderr
    assert stderr.count("init() completed") == 2  # every worker runs init() itself
    assert "Traceback" not in stderr
    assert _wait_gone(workers) == set()


def test_workers_die_when_the_supervisor_is_killed():
    port = _free_port()
    process = _spawn_workers(port, 2)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
        workers = _children(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        left = _wait_gone(workers)
    finally:
        for pid in _children(process.pid) | workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    assert len(workers) == 2
    assert left == set()


def test_a_worker_that_dies_is_replaced():
    port = _free_port()
    process = _spawn_workers(port, 2)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        first = _children(process.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_children(process.pid) - {victim}) < 2:
            time.sleep(0.1)
        replaced = _children(process.pid) - {victim}
        answer = requests.post(url + "/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)

    assert len(replaced) == 2 and victim not in replaced
    assert answer.status_code == 200
    assert "exited with -9; restarting" in stderr
    assert process.returncode == 0


def test_threads_are_shared_out_over_the_processes_unless_set():
    single = ScoringSettings(model_dir=IRIS_DIR)
    several = ScoringSettings(model_dir=IRIS_DIR, processes=4)
    explicit = ScoringSettings(model_dir=IRIS_DIR, processes=4, inference_workers=3)

    assert single.processes == 1  # the Python API and the agent's settings file: one process
    assert several.inference_workers == max(1, single.inference_workers // 4)
    assert several.resolved_intra_op_threads() >= 1
    assert explicit.inference_workers == 3
