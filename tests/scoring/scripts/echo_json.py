"""A plain run(raw_data) that answers with what it parsed: shows what a script is handed."""

import json


def init():
    pass


def run(raw_data):
    return json.loads(raw_data)
