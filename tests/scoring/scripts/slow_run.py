import json
import time


def init():
    pass


def run(raw_data):
    time.sleep(json.loads(raw_data)["sleep"])
    return "done"
