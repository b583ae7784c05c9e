"""One exception tree for the whole project, so callers catch at the level they care about.

The CLI turns any `ModelfleetError` into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class ModelfleetError(Exception):
    """Base of every error modelfleet raises on purpose."""

    exit_code = 1


class ConfigError(ModelfleetError):
    """Workspace or agent configuration is missing or invalid."""

    exit_code = 2


class InvalidModelError(ModelfleetError):
    """A model file or folder cannot be registered as given."""


class InvalidPackageError(ModelfleetError):
    """A module cannot be packaged from what was given (entry script, conda file, models)."""


class VersionConflictError(ModelfleetError):
    """An explicit version that already exists in the registry."""


class RegistryError(ModelfleetError):
    """The registry answered, but not with what we asked for."""


class RegistryUnreachableError(RegistryError):
    """No answer from the registry at all: wrong URL, service down, network cut."""


class AuthenticationError(RegistryError):
    """The registry refused our credentials (or asked for some we do not have)."""


class NotFoundError(RegistryError):
    """A repository, tag, manifest or blob that does not exist."""


class DigestMismatchError(RegistryError):
    """Bytes that do not hash to the digest they were fetched by; never kept."""
