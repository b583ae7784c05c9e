"""Two models in one service, found the ways Azure ML v1 documents: <name>/<version>/<file>
under AZUREML_MODEL_DIR, and Model.get_model_path with and without a version."""

import json
import os

import onnxruntime as ort
from azureml.core import Model

paths = {}


def init():
    root = os.getenv("AZUREML_MODEL_DIR")
    paths["iris_joined"] = os.path.join(root, "iris", "1", "model.onnx")
    paths["iris"] = Model.get_model_path("iris")
    paths["cnn_v2"] = Model.get_model_path("cnn", version=2)
    paths["cnn_latest"] = Model.get_model_path("cnn")
    for path in set(paths.values()):
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(raw_data):
    root = os.getenv("AZUREML_MODEL_DIR")
    return {key: os.path.relpath(path, root) for key, path in paths.items()} | {"raw": json.loads(raw_data)}
