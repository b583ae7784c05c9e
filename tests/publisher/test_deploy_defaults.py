"""What a deployment gets when the command line says nothing: the contract's defaults, once."""

from __future__ import annotations

from modules.deployment import DEFAULT_MAX_FAILURE_RATIO, DEFAULT_MIN_HEALTHY_SECONDS, Rollout
from publisher import DeploymentSettings
from publisher.cli import build_parser


def test_a_new_deployment_restarts_its_modules_always_as_iot_edge_does() -> None:
    assert DeploymentSettings().restart_policy == "always"


def test_rollout_defaults_are_the_documents_own() -> None:
    settings = DeploymentSettings(rollout="10%,100%")
    rollout = Rollout(steps=[10, 100])
    assert settings.min_healthy_seconds == rollout.min_healthy_seconds == DEFAULT_MIN_HEALTHY_SECONDS
    assert settings.max_failure_ratio == rollout.max_failure_ratio == DEFAULT_MAX_FAILURE_RATIO


def test_options_left_out_fall_back_to_the_settings_defaults() -> None:
    args = build_parser().parse_args(["deploy", "create", "-n", "x", "--module", "m"])
    assert args.restart_policy is None  # left out: the settings' default applies, not the parser's
    assert args.timeout == 600.0
