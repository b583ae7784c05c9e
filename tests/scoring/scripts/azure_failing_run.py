"""A run() that fails the way real ones do: an exception whose text holds a secret, which must
stay in the server's log."""

import json


def init():
    pass


def run(raw_data):
    request = json.loads(raw_data)
    if request.get("fail") == "key":
        return request["missing"]
    if request.get("fail") == "secret":
        raise RuntimeError("cannot reach Server=tcp:db.internal;Password=hunter2")
    return {"ok": True}
