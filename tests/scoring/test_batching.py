import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from modules.scoring._batching import DynamicBatcher
from modules.scoring._errors import RunFailedError

from .conftest import IRIS_DIR


def _doubling_model(calls: list[int]):
    def run(feeds):
        calls.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2}

    return run


async def _batched(run, requests_, *, max_batch_size=4):
    with ThreadPoolExecutor(2) as executor:
        batcher = DynamicBatcher(
            run, max_batch_size=max_batch_size, max_wait_ms=50, executor=executor, max_in_flight=1
        )
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests_), return_exceptions=True)
        finally:
            await batcher.close()


async def test_concurrent_requests_share_one_model_call_and_get_their_own_rows():
    calls: list[int] = []
    inputs = [{"x": np.full((1, 3), i, dtype=np.float32)} for i in range(6)]

    results = await _batched(_doubling_model(calls), inputs)

    assert calls == [4, 2]
    for i, result in enumerate(results):
        assert result["y"].tolist() == [[2.0 * i] * 3]


async def test_multi_row_requests_are_split_back_by_their_row_counts():
    calls: list[int] = []
    inputs = [{"x": np.ones((2, 3), dtype=np.float32)}, {"x": np.zeros((1, 3), dtype=np.float32)}]

    results = await _batched(_doubling_model(calls), inputs)

    assert calls == [3]
    assert results[0]["y"].shape == (2, 3)
    assert results[1]["y"].tolist() == [[0.0, 0.0, 0.0]]


async def test_requests_that_cannot_be_stacked_run_in_separate_batches():
    calls: list[int] = []
    inputs = [{"x": np.ones((1, 3), dtype=np.float32)}, {"x": np.ones((1, 5), dtype=np.float32)}]

    results = await _batched(_doubling_model(calls), inputs)

    assert calls == [1, 1]
    assert results[1]["y"].shape == (1, 5)


async def test_a_failing_batch_fails_each_of_its_requests():
    def broken(feeds):
        raise RunFailedError("model failed: boom")

    results = await _batched(broken, [{"x": np.ones((1, 1))}, {"x": np.ones((1, 1))}])

    assert all(isinstance(r, RunFailedError) for r in results)


class _GatedModel:
    """Blocks each call until released, so a test can queue requests behind a running batch."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()

    def __call__(self, feeds):
        self.calls.append(feeds["x"].shape[0])
        self.gate.wait(30)
        return {"y": feeds["x"] * 2}


def _one_row(i: int) -> dict:
    return {"x": np.full((1, 2), i, dtype=np.float32)}


async def test_requests_queued_behind_a_running_batch_go_as_soon_as_it_ends():
    model = _GatedModel()
    with ThreadPoolExecutor(1) as executor:
        # A minute's wait for company: only the queued-behind rule can send these batches.
        batcher = DynamicBatcher(
            model, max_batch_size=2, max_wait_ms=60_000, executor=executor, max_in_flight=1
        )
        batcher.start()
        first = [asyncio.ensure_future(batcher.submit(_one_row(i))) for i in range(2)]  # full: goes
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(_one_row(i))) for i in range(2, 5)]
        await asyncio.sleep(0.05)
        assert model.calls == [2]

        model.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *queued), 10)
        await batcher.close()

    assert model.calls == [2, 2, 1]
    assert [r["y"][0][0] for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0]


async def _two_requests_50ms_apart(*, max_batch_size: int, max_wait_ms: float) -> list[int]:
    """The model calls made for two one-row requests, the second sent 50 ms after the first."""
    calls: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(
            _doubling_model(calls),
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            executor=executor,
            max_in_flight=1,
        )
        batcher.start()
        early = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 3), dtype=np.float32)}))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 3), dtype=np.float32)}))
        await asyncio.wait_for(asyncio.gather(early, late), 10)
        await batcher.close()
    return calls


async def test_a_request_on_an_idle_model_waits_for_company():
    assert await _two_requests_50ms_apart(max_batch_size=8, max_wait_ms=300) == [2]


async def test_a_batch_that_fills_up_goes_without_waiting_out_the_timer():
    assert await _two_requests_50ms_apart(max_batch_size=2, max_wait_ms=60_000) == [2]


async def test_a_request_cancelled_while_queued_is_left_out_of_the_batch():
    model = _GatedModel()
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, executor=executor, max_in_flight=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(_one_row(0)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(_one_row(1)))
        kept = asyncio.ensure_future(batcher.submit(_one_row(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(running, kept), 10)
        await batcher.close()

    assert model.calls == [1, 1]
    assert kept.result()["y"][0][0] == 4.0


async def test_closing_fails_what_is_still_queued():
    model = _GatedModel()
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, executor=executor, max_in_flight=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(_one_row(0)))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(_one_row(1)))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        model.gate.set()
        await asyncio.wait_for(closing, 10)

        assert running.result()["y"][0][0] == 0.0
        with pytest.raises(RunFailedError, match="shutting down"):
            await queued
        with pytest.raises(RunFailedError, match="shutting down"):
            await batcher.submit(_one_row(2))


async def test_a_batch_that_cannot_start_fails_its_requests_and_keeps_the_worker():
    calls: list[int] = []
    broken_metrics = [True]

    def on_batch(rows: int) -> None:
        if broken_metrics[0]:
            raise RuntimeError("metrics broke")

    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(
            _doubling_model(calls),
            max_batch_size=4,
            max_wait_ms=0,
            executor=executor,
            max_in_flight=1,
            on_batch=on_batch,
        )
        batcher.start()
        with pytest.raises(RunFailedError, match="metrics broke"):
            await asyncio.wait_for(batcher.submit(_one_row(1)), 10)
        broken_metrics[0] = False
        result = await asyncio.wait_for(batcher.submit(_one_row(3)), 10)
        await batcher.close()

    assert result["y"][0][0] == 6.0 and calls == [1]


def test_batching_host_answers_concurrent_clients_correctly(serve_host):
    host = serve_host(model_dir=IRIS_DIR, batching={"max_batch_size": 8, "max_wait_ms": 20})
    rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [7.0, 3.2, 4.7, 1.4]]
    expected = [0, 2, 1]

    def score(i: int) -> int:
        body = {"data": [rows[i % 3]]}
        return requests.post(host.url + "/score", json=body, timeout=30).json()["label"][0]

    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(score, range(24)))

    assert labels == [expected[i % 3] for i in range(24)]
    metrics = requests.get(host.url + "/metrics", timeout=5).text
    count = next(
        line for line in metrics.splitlines() if line.startswith("modelfleet_scoring_batch_size_sum")
    )
    assert float(count.split()[-1]) == pytest.approx(24)
