"""The workstation side: register models, package modules, publish deployments.

The public Python API, named after Azure ML v1's where the ideas match.
"""

from modules._errors import ModelfleetError
from publisher._model import Model
from publisher._module import Module
from publisher._workspace import Workspace

__all__ = ["Model", "ModelfleetError", "Module", "Workspace"]
