"""Where things are inside a module image, and the names the image and its runner agree on.

The agent's Docker runtime (and anyone with `docker run`) starts a module image knowing only
these: the port variable, the host variable, the baked settings variable. Paths follow Azure ML
v1's containers (`/var/azureml-app`, `azureml-models/<name>/<version>/`), so an entry script that
worked there finds its files here.
"""

from __future__ import annotations

from pathlib import PurePosixPath

APP_ROOT = PurePosixPath("/var/azureml-app")
MODELS_ROOT = APP_ROOT / "azureml-models"
CODE_ROOT = APP_ROOT / "code"
RUNTIME_SITE = PurePosixPath("/opt/modelfleet/site-packages")
REQUIREMENTS_SITE = PurePosixPath("/opt/modelfleet/requirements")

PORT_ENV = "MODELFLEET_PORT"
HOST_ENV = "MODELFLEET_HOST"
SETTINGS_ENV = "MODELFLEET_SCORING_SETTINGS"
VERSION_ENV = "MODELFLEET_MODULE_VERSION"
DEFAULT_PORT = 5001  # Azure ML's inference server and its IoT Edge modules listen on 5001
DEFAULT_HOST = "0.0.0.0"  # a container's own address; with host networking, pass 127.0.0.1

# Media types of ordinary container images (what `docker pull` expects).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# The same bytes under either vocabulary; an OCI manifest names them the OCI way.
LAYER_TYPES = {
    OCI_LAYER_GZIP: OCI_LAYER_GZIP,
    OCI_LAYER_TAR: OCI_LAYER_TAR,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
}

# Annotations (manifest) and labels (config).
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
TITLE = "org.opencontainers.image.title"
MODULE_LABEL = "io.modelfleet.module"
PYTHON_LABEL = "io.modelfleet.python"
BASE_KEY_LABEL = "io.modelfleet.base.key"
# The spec's sample input, compact JSON: the smoke request an agent sends a new container before
# it gets traffic. Left out when larger than SAMPLE_INPUT_LABEL_MAX (then there is no smoke request).
SAMPLE_INPUT_LABEL = "io.modelfleet.sample-input"
SAMPLE_INPUT_LABEL_MAX = 16 * 1024

# A fixed creation time: a build timestamp would make every build a new digest.
EPOCH = "1970-01-01T00:00:00Z"
