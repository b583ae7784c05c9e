from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from modules.deployment import Rollout, in_rollout, rollout_bucket

DEVICES = [f"device-{n:05d}" for n in range(10_000)]


def test_bucket_follows_the_documented_formula() -> None:
    expected = int(hashlib.sha256(b"iris-prod:press-07").hexdigest()[:8], 16) % 10000

    assert rollout_bucket("iris-prod", "press-07") == expected


def test_membership_is_stable_across_calls() -> None:
    assert [in_rollout("iris-prod", d, 10) for d in DEVICES[:200]] == [
        in_rollout("iris-prod", d, 10) for d in DEVICES[:200]
    ]


def test_devices_in_an_early_step_stay_in_every_later_step() -> None:
    steps = [1, 10, 50, 100]
    for device in DEVICES[:2000]:
        membership = [in_rollout("iris-prod", device, percent) for percent in steps]
        assert membership == sorted(membership), device  # False..False, True..True
    assert all(in_rollout("iris-prod", d, 100) for d in DEVICES)


@pytest.mark.parametrize("percent", [10, 50])
def test_about_the_requested_share_of_devices_is_in_a_step(percent: int) -> None:
    share = sum(in_rollout("iris-prod", d, percent) for d in DEVICES) / len(DEVICES)

    assert abs(share - percent / 100) < 0.015


def test_different_deployments_pick_different_canaries() -> None:
    first = {d for d in DEVICES[:2000] if in_rollout("iris-prod", d, 10)}
    second = {d for d in DEVICES[:2000] if in_rollout("pump-prod", d, 10)}

    assert first != second


def test_rollout_current_percent_follows_the_step_index() -> None:
    assert Rollout(steps=[10, 50, 100], current_step=1).percent == 50


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": []},
        {"steps": [50, 10]},
        {"steps": [10, 10]},
        {"steps": [0, 100]},
        {"steps": [10, 101]},
        {"steps": [10, 100], "currentStep": 2},
        {"steps": [100], "maxFailureRatio": 1.5},
    ],
)
def test_invalid_rollout_is_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        Rollout.model_validate(fields)
