"""A release that cannot start: init() raises."""


def init():
    raise RuntimeError("model file is corrupt: cannot load weights")


def run(raw_data):
    return {}
