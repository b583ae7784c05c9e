from __future__ import annotations

import itertools

from modules.deployment import DeploymentRef, DeviceFacts, ModelfleetModule, select_deployments
from tests.deployment._factories import document, manifest, modelfleet_module

DEVICE = DeviceFacts("press-07", tags={"site": "plant-1", "gpu": True})


def digest(char: str) -> str:
    return "sha256:" + char * 64


def iris(char: str) -> dict:
    return manifest({"iris": modelfleet_module(digest=digest(char))})


def iris_digest(selection) -> str:
    module = selection.manifest.modules["iris"]
    assert isinstance(module, ModelfleetModule)
    return module.settings.digest


def test_highest_priority_matching_base_deployment_wins() -> None:
    docs = [
        document("low", priority=1, content=iris("a")),
        document("high", priority=5, content=iris("b")),
        document("elsewhere", priority=9, targetCondition="tags.site = 'plant-2'", content=iris("c")),
    ]

    selection = select_deployments(DEVICE, docs)

    assert selection.applied == (DeploymentRef("high", 1),)
    assert iris_digest(selection) == digest("b")


def test_equal_priority_is_broken_by_higher_version_then_first_name() -> None:
    by_version = [document("b-deploy", version=2, content=iris("a")), document("a-deploy", content=iris("b"))]
    by_name = [document("b-deploy", content=iris("a")), document("a-deploy", content=iris("b"))]

    assert select_deployments(DEVICE, by_version).applied == (DeploymentRef("b-deploy", 2),)
    assert select_deployments(DEVICE, by_name).applied == (DeploymentRef("a-deploy", 1),)


def test_selection_does_not_depend_on_input_order() -> None:
    docs = [
        document("base-a", priority=1, content=iris("a")),
        document("base-b", priority=1, content=iris("b")),
        document(
            "layer-x", priority=3, layered=True, content=manifest({"x": modelfleet_module("modules/x")})
        ),
        document(
            "layer-y", priority=3, layered=True, content=manifest({"x": modelfleet_module("modules/y")})
        ),
    ]

    results = {
        (select_deployments(DEVICE, order).applied, str(select_deployments(DEVICE, order).manifest))
        for order in itertools.permutations(docs)
    }

    assert len(results) == 1


def test_layered_deployments_apply_on_top_of_the_base_in_priority_order() -> None:
    base = document(
        "base",
        priority=10,
        content=manifest(
            {"iris": modelfleet_module(digest=digest("a")), "keep": modelfleet_module("modules/keep")},
            routes={"toCloud": "FROM /* INTO $upstream"},
        ),
    )
    strong = document(
        "monitoring",
        priority=2,
        layered=True,
        content=manifest(
            {"iris": modelfleet_module(digest=digest("c"))}, routes={"metrics": "FROM /m INTO $upstream"}
        ),
    )
    weak = document(
        "canary-model",
        priority=1,
        layered=True,
        content=manifest(
            {"iris": modelfleet_module(digest=digest("b")), "probe": modelfleet_module("modules/probe")},
            probe={"interval": 5},
        ),
    )

    selection = select_deployments(DEVICE, [strong, base, weak])

    assert selection.applied == (
        DeploymentRef("base", 1),
        DeploymentRef("canary-model", 1),
        DeploymentRef("monitoring", 1),
    )
    assert selection.manifest is not None
    assert set(selection.manifest.modules) == {"iris", "keep", "probe"}
    assert iris_digest(selection) == digest("c")
    hub = selection.manifest.modules_content.edge_hub
    assert hub is not None and set(hub.desired.routes or {}) == {"toCloud", "metrics"}
    assert selection.manifest.modules_content.module_twins["probe"].desired == {"interval": 5}


def test_layered_deployments_without_a_base_apply_nothing() -> None:
    selection = select_deployments(DEVICE, [document("layer", layered=True)])

    assert selection.manifest is None
    assert selection.applied == ()


def test_nothing_matches_means_no_desired_state() -> None:
    selection = select_deployments(DEVICE, [document(targetCondition="tags.gpu = false")])

    assert selection.manifest is None


def test_per_device_override_wins_over_any_fleet_priority() -> None:
    docs = [
        document("fleet", priority=100, content=iris("a")),
        document("press-07-pin", priority=0, device="press-07", targetCondition="*", content=iris("b")),
        document("press-08-pin", priority=0, device="press-08", targetCondition="*", content=iris("c")),
    ]

    selection = select_deployments(DEVICE, docs)

    assert selection.applied == (DeploymentRef("press-07-pin", 1),)
    assert iris_digest(selection) == digest("b")


def test_per_device_layer_is_applied_after_every_fleet_layer() -> None:
    docs = [
        document("fleet", content=iris("a")),
        document("fleet-layer", priority=100, layered=True, content=iris("b")),
        document("device-layer", layered=True, device="press-07", targetCondition="*", content=iris("c")),
    ]

    selection = select_deployments(DEVICE, docs)

    assert selection.applied[-1] == DeploymentRef("device-layer", 1)
    assert iris_digest(selection) == digest("c")


def test_only_the_newest_version_of_a_deployment_name_is_applied() -> None:
    docs = [
        document(version=1, content=iris("a")),
        document(version=3, content=iris("c")),
        document(version=2),
    ]

    selection = select_deployments(DEVICE, docs)

    assert selection.applied == (DeploymentRef("iris-prod", 3),)
    assert iris_digest(selection) == digest("c")


def test_retargeted_newest_version_withdraws_the_deployment() -> None:
    docs = [document(version=1), document(version=2, targetCondition="tags.site = 'plant-9'")]

    assert select_deployments(DEVICE, docs).manifest is None


def test_device_outside_the_rollout_step_keeps_the_previous_version() -> None:
    # Find a device outside the first 10% of this deployment's rollout.
    outside = next(
        DeviceFacts(f"dev-{n}", tags={"site": "plant-1"})
        for n in range(1000)
        if not select_deployments(
            DeviceFacts(f"dev-{n}", tags={"site": "plant-1"}),
            [document(version=2, rollout={"steps": [10, 100]})],
        ).applied
    )
    docs = [
        document(version=1, content=iris("a")),
        document(version=2, content=iris("b"), rollout={"steps": [10, 100]}),
    ]

    selection = select_deployments(outside, docs)

    assert selection.applied == (DeploymentRef("iris-prod", 1),)
    assert selection.deferred == (DeploymentRef("iris-prod", 2),)

    finished = document(version=2, content=iris("b"), rollout={"steps": [10, 100], "currentStep": 1})
    assert select_deployments(outside, [docs[0], finished]).applied == (DeploymentRef("iris-prod", 2),)
