"""Starts fine, then the process dies a moment later: exercises restart policy and backoff."""

import os
import threading


def init():
    threading.Timer(0.5, lambda: os._exit(3)).start()


def run(raw_data):
    return {"ok": True}
