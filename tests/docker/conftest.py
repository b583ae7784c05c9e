"""Fixtures of the docker-runtime tests: the same real Docker engine, basic-auth Distribution
registry, workspace and base image as the image tests (`tests/images/conftest.py`), and a module
image of the iris sample built once for the session."""

from __future__ import annotations

import asyncio
import os

import pytest

from publisher import Model, Workspace
from publisher._image import ModuleImage
from tests.docker._harness import IRIS_DIR, SCORE_SCRIPT, package_image
from tests.images.conftest import base_image_ref, docker_engine, image_workspace

__all__ = ["base_image_ref", "docker_engine", "image_workspace"]


@pytest.fixture(scope="session")
def iris_model(image_workspace: Workspace) -> Model:
    return Model.register(image_workspace, IRIS_DIR / "model.onnx", f"iris-{os.urandom(3).hex()}")


@pytest.fixture(scope="session")
def iris_image(image_workspace: Workspace, base_image_ref: str, iris_model: Model) -> ModuleImage:
    """The iris sample as a module image: `modelfleet module package --image` in code."""
    return asyncio.run(package_image(image_workspace, iris_model, SCORE_SCRIPT))
