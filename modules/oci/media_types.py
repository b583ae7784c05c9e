"""Media types: what each blob and manifest is, in the registry's own vocabulary."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])

MODEL_CONFIG = "application/vnd.modelfleet.model.config.v1+json"
MODEL_FILE = "application/vnd.modelfleet.model.file.v1"
MODULE_CONFIG = "application/vnd.modelfleet.module.config.v1+json"
MODULE_CODE = "application/vnd.modelfleet.module.code.v1.tar+gzip"

# Standard annotation keys; modelfleet's own live under io.modelfleet.*
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
DESCRIPTION = "org.opencontainers.image.description"
CREATED = "org.opencontainers.image.created"
FRAMEWORK = "io.modelfleet.framework"
TAGS = "io.modelfleet.tags"
PROPERTIES = "io.modelfleet.properties"
MODEL_REF = "io.modelfleet.model"
