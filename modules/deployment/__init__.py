"""The deployment contract between publisher and agent: manifest, envelope, targeting, trust.

Pure code without I/O, so the publisher, the agent and the simulator share one definition of
what a deployment is, who it is for, and whether it may be applied.

Each name is loaded from its module on first use (PEP 562): signing and checking signed
mappings, tombstones and the errors need neither the manifest nor the envelope, so an agent that
has received no deployment yet does not hold them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modules.deployment._canonical import canonical_json
    from modules.deployment._condition import (
        MAX_CONDITION_DEPTH,
        MAX_CONDITION_LENGTH,
        Condition,
        parse_condition,
    )
    from modules.deployment._envelope import (
        DEFAULT_MAX_FAILURE_RATIO,
        DEFAULT_MIN_HEALTHY_SECONDS,
        DeploymentDocument,
        Rollout,
    )
    from modules.deployment._errors import (
        BadSignatureError,
        CanonicalFormError,
        ConditionSyntaxError,
        DeploymentError,
        ReplayedDocumentError,
        TrustError,
        UnsignedDocumentError,
        UntrustedKeyError,
    )
    from modules.deployment._iotedge import (
        MODELFLEET_SETTINGS_KEY,
        DeploymentFile,
        ManifestError,
        from_iotedge,
        manifest_of,
        parse_manifest_file,
        to_iotedge,
    )
    from modules.deployment._layered import LayerError, apply_layer, merge
    from modules.deployment._manifest import (
        CREATE_OPTIONS_CHUNK,
        CREATE_OPTIONS_MAX_CHUNKS,
        EDGE_AGENT_SCHEMA_VERSIONS,
        EDGE_HUB_SCHEMA_VERSIONS,
        DockerModule,
        DockerSettings,
        EdgeAgentDesired,
        EdgeHubDesired,
        EnvVar,
        Manifest,
        ModelfleetModule,
        ModelfleetSettings,
        Module,
        ModulesContent,
        ModuleTwin,
        Route,
        Runtime,
        describe,
        desired_path,
        split_create_options,
    )
    from modules.deployment._policies import DEFAULT_RESTART_POLICY, STARTUP_ORDER_MAX, RestartPolicy
    from modules.deployment._selected import DeploymentRef, DeviceFacts, Selection
    from modules.deployment._selection import in_rollout, rollout_bucket, select_deployments
    from modules.deployment._signature import Signature
    from modules.deployment._signing import (
        check_not_replayed,
        sign_document,
        sign_mapping,
        signing_payload,
        verify_document,
    )
    from modules.deployment._tombstone import (
        TOMBSTONE_KIND,
        Tombstone,
        TombstoneOf,
        document_identity,
        is_tombstone,
    )

_MODULES: dict[str, tuple[str, ...]] = {
    "_canonical": ("canonical_json",),
    "_condition": (
        "Condition",
        "MAX_CONDITION_DEPTH",
        "MAX_CONDITION_LENGTH",
        "parse_condition",
    ),
    "_envelope": (
        "DEFAULT_MAX_FAILURE_RATIO",
        "DEFAULT_MIN_HEALTHY_SECONDS",
        "DeploymentDocument",
        "Rollout",
    ),
    "_errors": (
        "BadSignatureError",
        "CanonicalFormError",
        "ConditionSyntaxError",
        "DeploymentError",
        "ReplayedDocumentError",
        "TrustError",
        "UnsignedDocumentError",
        "UntrustedKeyError",
    ),
    "_iotedge": (
        "DeploymentFile",
        "MODELFLEET_SETTINGS_KEY",
        "ManifestError",
        "from_iotedge",
        "manifest_of",
        "parse_manifest_file",
        "to_iotedge",
    ),
    "_layered": (
        "LayerError",
        "apply_layer",
        "merge",
    ),
    "_manifest": (
        "CREATE_OPTIONS_CHUNK",
        "CREATE_OPTIONS_MAX_CHUNKS",
        "DockerModule",
        "DockerSettings",
        "EDGE_AGENT_SCHEMA_VERSIONS",
        "EDGE_HUB_SCHEMA_VERSIONS",
        "EdgeAgentDesired",
        "EdgeHubDesired",
        "EnvVar",
        "Manifest",
        "ModelfleetModule",
        "ModelfleetSettings",
        "Module",
        "ModuleTwin",
        "ModulesContent",
        "Route",
        "Runtime",
        "describe",
        "desired_path",
        "split_create_options",
    ),
    "_policies": (
        "DEFAULT_RESTART_POLICY",
        "RestartPolicy",
        "STARTUP_ORDER_MAX",
    ),
    "_selected": (
        "DeploymentRef",
        "DeviceFacts",
        "Selection",
    ),
    "_selection": (
        "in_rollout",
        "rollout_bucket",
        "select_deployments",
    ),
    "_signature": ("Signature",),
    "_signing": (
        "check_not_replayed",
        "sign_document",
        "sign_mapping",
        "signing_payload",
        "verify_document",
    ),
    "_tombstone": (
        "TOMBSTONE_KIND",
        "Tombstone",
        "TombstoneOf",
        "document_identity",
        "is_tombstone",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CREATE_OPTIONS_CHUNK",
    "CREATE_OPTIONS_MAX_CHUNKS",
    "DEFAULT_MAX_FAILURE_RATIO",
    "DEFAULT_MIN_HEALTHY_SECONDS",
    "DEFAULT_RESTART_POLICY",
    "EDGE_AGENT_SCHEMA_VERSIONS",
    "EDGE_HUB_SCHEMA_VERSIONS",
    "MAX_CONDITION_DEPTH",
    "MAX_CONDITION_LENGTH",
    "MODELFLEET_SETTINGS_KEY",
    "STARTUP_ORDER_MAX",
    "TOMBSTONE_KIND",
    "BadSignatureError",
    "CanonicalFormError",
    "Condition",
    "ConditionSyntaxError",
    "DeploymentDocument",
    "DeploymentError",
    "DeploymentFile",
    "DeploymentRef",
    "DeviceFacts",
    "DockerModule",
    "DockerSettings",
    "EdgeAgentDesired",
    "EdgeHubDesired",
    "EnvVar",
    "LayerError",
    "Manifest",
    "ManifestError",
    "ModelfleetModule",
    "ModelfleetSettings",
    "Module",
    "ModuleTwin",
    "ModulesContent",
    "ReplayedDocumentError",
    "RestartPolicy",
    "Rollout",
    "Route",
    "Runtime",
    "Selection",
    "Signature",
    "Tombstone",
    "TombstoneOf",
    "TrustError",
    "UnsignedDocumentError",
    "UntrustedKeyError",
    "apply_layer",
    "canonical_json",
    "check_not_replayed",
    "describe",
    "desired_path",
    "document_identity",
    "from_iotedge",
    "in_rollout",
    "is_tombstone",
    "manifest_of",
    "merge",
    "parse_condition",
    "parse_manifest_file",
    "rollout_bucket",
    "select_deployments",
    "sign_document",
    "sign_mapping",
    "signing_payload",
    "split_create_options",
    "to_iotedge",
    "verify_document",
]
