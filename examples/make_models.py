"""Regenerate the sample models in examples/models/ (needs the `examples` extra).

The files are committed so the quick start needs neither scikit-learn nor skl2onnx; this script
is how they were made and how to make them again, deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent / "models"


def make_iris(out: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    model = to_onnx(
        clf,
        x[:1].astype(np.float32),
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    model.graph.input[0].name = "input"
    for node in model.graph.node:
        node.input[:] = ["input" if name == "X" else name for name in node.input]
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    sample = {"data": x[[0, 50, 100]].tolist()}
    (out / "sample-input.json").write_text(json.dumps(sample) + "\n")


def make_cnn(out: Path, seed: int = 7) -> None:
    """A small image classifier: 1x28x28 in, 10 class probabilities out."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        data = rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=shape).astype(np.float32)
        return numpy_helper.from_array(data, name)

    initializers = [
        init("c1_w", (16, 1, 3, 3)),
        numpy_helper.from_array(np.zeros(16, np.float32), "c1_b"),
        init("c2_w", (32, 16, 3, 3)),
        numpy_helper.from_array(np.zeros(32, np.float32), "c2_b"),
        init("fc_w", (32, 10)),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelfleet-examples"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    sample = {"data": rng.random((1, 1, 28, 28), dtype=np.float32).round(3).tolist()}
    (out / "sample-input.json").write_text(json.dumps(sample) + "\n")


if __name__ == "__main__":
    make_iris(HERE / "iris")
    make_cnn(HERE / "cnn")
    print(f"wrote sample models under {HERE}")
