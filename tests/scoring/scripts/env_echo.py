import json
import os

model_dir_at_import = os.environ.get("AZUREML_MODEL_DIR")
init_calls = 0


def init():
    global init_calls
    init_calls += 1


def run(raw_data):
    return {
        "azureml_model_dir": os.environ["AZUREML_MODEL_DIR"],
        "modelfleet_model_dir": os.environ["MODELFLEET_MODEL_DIR"],
        "at_import": model_dir_at_import,
        "init_calls": init_calls,
        "echo": json.loads(raw_data),
    }
