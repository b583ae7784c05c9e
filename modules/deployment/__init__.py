"""The deployment contract between publisher and agent: manifest, envelope, targeting, trust.

Pure code without I/O, so the publisher, the agent and the simulator share one definition of
what a deployment is, who it is for, and whether it may be applied.
"""

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
    Signature,
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
from modules.deployment._manifest import (
    DEFAULT_RESTART_POLICY,
    STARTUP_ORDER_MAX,
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
    RestartPolicy,
    Route,
    Runtime,
)
from modules.deployment._selection import (
    DeploymentRef,
    DeviceFacts,
    Selection,
    in_rollout,
    rollout_bucket,
    select_deployments,
)
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

__all__ = [
    "DEFAULT_MAX_FAILURE_RATIO",
    "DEFAULT_MIN_HEALTHY_SECONDS",
    "DEFAULT_RESTART_POLICY",
    "MAX_CONDITION_DEPTH",
    "MAX_CONDITION_LENGTH",
    "STARTUP_ORDER_MAX",
    "TOMBSTONE_KIND",
    "BadSignatureError",
    "CanonicalFormError",
    "Condition",
    "ConditionSyntaxError",
    "DeploymentDocument",
    "DeploymentError",
    "DeploymentRef",
    "DeviceFacts",
    "DockerModule",
    "DockerSettings",
    "EdgeAgentDesired",
    "EdgeHubDesired",
    "EnvVar",
    "Manifest",
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
    "canonical_json",
    "check_not_replayed",
    "document_identity",
    "in_rollout",
    "is_tombstone",
    "parse_condition",
    "rollout_bucket",
    "select_deployments",
    "sign_document",
    "sign_mapping",
    "signing_payload",
    "verify_document",
]
