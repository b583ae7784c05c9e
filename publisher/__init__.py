"""The workstation side: register models, package modules, publish deployments."""
