"""Serves, then dies with exit code 3 after CRASH_AFTER_S seconds (a native library crashing in
production): long enough to pass readiness and the smoke request, so what follows is the restart
policy's business, not a failed start."""

import os
import threading


def init():
    threading.Timer(float(os.environ.get("CRASH_AFTER_S", "5")), lambda: os._exit(3)).start()


def run(raw_data):
    return {"ok": True}
