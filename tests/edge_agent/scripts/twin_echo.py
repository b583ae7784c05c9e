"""Answers with its twin's desired properties and the process that read them; reports what it saw."""

import os

from modules.scoring.twin import desired, report


def init():
    report(started_with=desired().get("threshold"))


def run(raw_data):
    twin = desired()
    report(seen=twin.get("threshold"), pid=os.getpid())
    return {"twin": twin, "pid": os.getpid()}
