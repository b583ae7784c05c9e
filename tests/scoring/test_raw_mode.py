import io

import requests
from PIL import Image

from .conftest import IRIS_DIR, SCRIPTS


def _png(width: int, height: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_raw_script_written_for_azureml_receives_png_bytes_and_headers(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "raw_png.py")
    response = requests.post(
        host.url + "/score",
        data=_png(28, 14, 200),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )

    assert response.status_code == 200
    assert response.json() == {
        "size": [28, 14],
        "mode": "RGB",
        "mean": 200.0,
        "content_type": "image/png",
    }


def test_raw_script_can_answer_with_binary_body_and_its_own_content_type(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "raw_png.py")
    response = requests.post(
        host.url + "/score?format=png",
        data=_png(8, 8, 10),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).mode == "L"


def test_raw_script_status_code_is_passed_through(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "raw_png.py")
    response = requests.get(host.url + "/score", timeout=30)

    assert response.status_code == 405
    assert response.text == "POST a PNG image"
