"""The workstation side: register models, package modules, publish deployments.

The public Python API, named after Azure ML v1's where the ideas match.
"""

from modules import ModelfleetError
from publisher._deploy import DeploymentExistsError, DeploymentSettings
from publisher._enrolment import EnrolmentError
from publisher._hub import FleetConnection, HubError, MethodTimeoutError
from publisher._model import Model
from publisher._module import Module
from publisher._rollout import RolloutResult
from publisher._service import DeploymentConfig, DeploymentFailedError, InferenceConfig, Service
from publisher._trust import UnverifiedDocumentError
from publisher._workspace import Workspace

__all__ = [
    "DeploymentConfig",
    "DeploymentExistsError",
    "DeploymentFailedError",
    "DeploymentSettings",
    "EnrolmentError",
    "FleetConnection",
    "HubError",
    "InferenceConfig",
    "MethodTimeoutError",
    "Model",
    "ModelfleetError",
    "Module",
    "RolloutResult",
    "Service",
    "UnverifiedDocumentError",
    "Workspace",
]
