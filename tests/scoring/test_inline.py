"""Runs measured tiny move onto the event loop; anything slower stays on (or goes back to) the
inference threads, so a slow model never holds the loop."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import requests

from modules.scoring import _loop
from modules.scoring._app import new_request_id, request_ids
from modules.scoring._inline import InlineGate

from .conftest import IRIS_DIR, SCRIPTS

WHERE = SCRIPTS / "where_run.py"
SMALL = 100


def _ran_on_a_thread(host, sleep: float = 0) -> bool:
    response = requests.post(host.url + "/score", json={"sleep": sleep}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["thread"].startswith("modelfleet-infer")


def _warm(gate: InlineGate, seconds: float = 0.0001, size: int = SMALL, runs: int = 8) -> None:
    for _ in range(runs):
        gate.record_threaded(seconds, size)


def test_runs_start_on_the_threads_and_move_to_the_loop_once_measured_fast() -> None:
    gate = InlineGate(1.0)
    assert not gate.allows(SMALL)
    _warm(gate, runs=7)
    assert not gate.allows(SMALL)
    gate.record_threaded(0.0001, SMALL)
    assert gate.allows(SMALL)


def test_a_model_slower_than_the_threshold_never_moves_to_the_loop() -> None:
    gate = InlineGate(1.0)
    _warm(gate, seconds=0.002, runs=100)
    assert not gate.allows(SMALL)
    assert not gate.allows(0)


def test_only_bodies_near_the_largest_seen_fast_run_on_the_loop() -> None:
    gate = InlineGate(1.0)
    _warm(gate)
    gate.record_threaded(0.5, 10_000)  # a large body that was slow does not raise the bound
    assert gate.allows(SMALL) and gate.allows(125)
    assert not gate.allows(126)
    assert not gate.allows(10_000)


def test_a_run_that_turns_slow_on_the_loop_moves_the_work_back_at_once() -> None:
    gate = InlineGate(1.0)
    _warm(gate)
    gate.record_inline(0.0001, 0.0001, False)
    assert gate.allows(SMALL)
    gate.record_inline(0.05, 0.0, True)  # blocked the loop for 50 ms: the average is over 1 ms
    assert not gate.allows(SMALL)
    assert gate.moves_back == 1
    _warm(gate)  # and it takes a window twice as long to come back
    assert not gate.allows(SMALL)
    _warm(gate)
    assert gate.allows(SMALL)


def test_one_short_stall_on_the_loop_does_not_move_the_work_back() -> None:
    gate = InlineGate(1.0)
    _warm(gate)
    gate.record_inline(0.004, 0.004, False)  # e.g. a pause of the collector
    assert gate.allows(SMALL)
    for _ in range(30):
        gate.record_inline(0.0015, 0.0015, False)  # but a model that stays over the threshold goes back
    assert not gate.allows(SMALL)


def test_time_spent_descheduled_does_not_count_but_time_spent_blocked_does() -> None:
    gate = InlineGate(1.0)
    _warm(gate)
    for _ in range(50):
        gate.record_inline(0.05, 0.0001, False)  # waited for a core: the model used 0.1 ms
    assert gate.allows(SMALL)
    gate.record_inline(0.05, 0.0001, True)  # slept or waited on I/O: it held the loop
    assert not gate.allows(SMALL)


def test_threshold_zero_keeps_every_run_on_the_threads() -> None:
    gate = InlineGate(0)
    _warm(gate, seconds=0.0, runs=100)
    assert not gate.allows(0)


def test_a_fast_script_ends_up_answering_on_the_loop(serve_host) -> None:
    host = serve_host(
        model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=60_000, scoring_timeout_ms=120_000
    )
    assert host.wait_loaded()["status"] == "Healthy"
    first = [_ran_on_a_thread(host) for _ in range(8)]
    assert all(first)
    assert not _ran_on_a_thread(host)


def test_a_slow_script_never_runs_on_the_loop(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=1)
    assert host.wait_loaded()["status"] == "Healthy"
    assert all(_ran_on_a_thread(host, sleep=0.005) for _ in range(20))


def test_a_script_that_turns_slow_goes_back_to_the_threads(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=50)
    assert host.wait_loaded()["status"] == "Healthy"
    for _ in range(8):
        _ran_on_a_thread(host)
    assert not _ran_on_a_thread(host)
    assert "modelfleet_scoring_inline 1" in requests.get(host.url + "/metrics", timeout=30).text
    assert not _ran_on_a_thread(host, sleep=0.6)  # held the loop once: the average is now over 50 ms
    assert _ran_on_a_thread(host)
    metrics = requests.get(host.url + "/metrics", timeout=30).text
    assert "modelfleet_scoring_inline 0" in metrics
    assert "modelfleet_scoring_inline_moves_back_total 1" in metrics


def test_a_run_on_the_loop_past_the_timeout_is_still_a_504(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=200, scoring_timeout_ms=300)
    assert host.wait_loaded()["status"] == "Healthy"
    for _ in range(8):
        _ran_on_a_thread(host)
    assert not _ran_on_a_thread(host)
    response = requests.post(host.url + "/score", json={"sleep": 0.4}, timeout=60)
    assert response.status_code == 504


def test_no_run_goes_on_the_loop_when_the_threshold_is_not_below_the_timeout(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=500, scoring_timeout_ms=500)
    assert host.wait_loaded()["status"] == "Healthy"
    assert all(_ran_on_a_thread(host) for _ in range(20))


def test_uvloop_is_used_when_installed_unless_switched_off(monkeypatch) -> None:
    class FakeUvloop:
        @staticmethod
        def new_event_loop() -> asyncio.AbstractEventLoop:
            return asyncio.new_event_loop()

    monkeypatch.setitem(__import__("sys").modules, "uvloop", FakeUvloop)
    monkeypatch.delenv(_loop.SWITCH, raising=False)
    assert _loop.loop_factory() is FakeUvloop.new_event_loop
    monkeypatch.setenv(_loop.SWITCH, "0")
    assert _loop.loop_factory() is None
    monkeypatch.delenv(_loop.SWITCH)
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # not installed
    assert _loop.loop_factory() is None

    async def answer() -> int:
        return 42

    assert _loop.run(answer()) == 42


def test_request_ids_are_unique_version_4_uuids_and_differ_per_process() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(value).version == 4 for value in ids)
    assert request_ids({}).request_id not in ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's ids come from its own random draw
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child[:24] != next(iter(ids))[:24]
    assert uuid.UUID(child).version == 4


def _warm_host(host) -> None:
    """Eight fast threaded runs with bodies a little larger than the tests send afterwards."""
    for _ in range(8):
        requests.post(host.url + "/score", json={"pad": "x" * 40}, timeout=30)
    assert not _ran_on_a_thread(host)


def test_a_script_running_its_own_event_loop_works_on_the_loop_too(serve_host) -> None:
    host = serve_host(
        model_dir=IRIS_DIR, entry_script=WHERE, inline_below_ms=60_000, scoring_timeout_ms=120_000
    )
    assert host.wait_loaded()["status"] == "Healthy"
    _warm_host(host)
    response = requests.post(host.url + "/score", json={"asyncio": True}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["coroutine"] == "ran"
    assert not response.json()["thread"].startswith("modelfleet-infer")


def test_a_run_on_the_loop_never_overlaps_one_still_going_on_a_thread(serve_host) -> None:
    host = serve_host(
        model_dir=IRIS_DIR,
        entry_script=WHERE,
        inline_below_ms=60_000,
        scoring_timeout_ms=120_000,
        inference_workers=1,
    )
    assert host.wait_loaded()["status"] == "Healthy"
    _warm_host(host)
    # A body far larger than any seen goes to the thread; small ones sent meanwhile must wait.
    big = threading.Thread(
        target=requests.post,
        args=(host.url + "/score",),
        kwargs={"json": {"sleep": 0.5, "pad": "x" * 10_000}, "timeout": 30},
    )
    big.start()
    small = [requests.post(host.url + "/score", json={}, timeout=30).json() for _ in range(5)]
    big.join()
    after = requests.post(host.url + "/score", json={}, timeout=30).json()
    assert after["most_at_once"] == 1, small
