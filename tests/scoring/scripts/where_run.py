"""Answers with the thread its run() ran on and how many run() calls overlapped so far, after
sleeping as long as the body asks (and, when asked, after running a coroutine of its own)."""

import asyncio
import json
import threading
import time

_lock = threading.Lock()
_running = 0
_most = 0


def init():
    pass


async def _nap():
    await asyncio.sleep(0)
    return "ran"


def run(raw_data):
    global _running, _most
    with _lock:
        _running += 1
        _most = max(_most, _running)
    try:
        body = json.loads(raw_data)
        time.sleep(body.get("sleep", 0))
        coroutine = asyncio.run(_nap()) if body.get("asyncio") else None
        return {"thread": threading.current_thread().name, "most_at_once": _most, "coroutine": coroutine}
    finally:
        with _lock:
            _running -= 1
