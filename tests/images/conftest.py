"""Session fixtures for the image tests: the Docker engine, a registry behind basic auth, a
workspace on it, and the base image (built once per machine, cached by the script's content)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher import Workspace
from tests._docker import DockerEngine, shared_docker_engine
from tests._services import Service


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    with shared_docker_engine(lambda: tmp_path_factory.mktemp("docker")) as engine:
        yield engine


@pytest.fixture(scope="session")
def image_workspace(distribution_basic_auth: Service, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root: Path = tmp_path_factory.mktemp("image-workspace")
    created = Workspace.create(root, registry=distribution_basic_auth.url)
    return Workspace.load(
        created.config_path,
        registry_user=distribution_basic_auth.username,
        registry_password=distribution_basic_auth.password,
    )


@pytest.fixture(scope="session")
def base_image_ref(image_workspace: Workspace) -> str:
    """`bases/modelfleet-python@sha256:...`, also tagged `latest`, which module images default to.
    The first session on a machine runs debootstrap (about 45 s); later ones reuse the cache."""
    from publisher._image import build_base_image, push_base_image

    return push_base_image(image_workspace, build_base_image())
