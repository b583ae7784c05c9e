"""The entry script both servers run in bench/scoring.py: JSON in, ONNX Runtime, JSON out."""

import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    model_dir = os.environ["AZUREML_MODEL_DIR"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    (probabilities,) = session.run(None, {"input": data})
    return {"probabilities": probabilities.tolist()}
