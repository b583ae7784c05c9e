"""The twin layout on its own: documents in, reports out, within IoT Hub's rules for twins."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent._config import AgentConfig
from edge_agent._control_plane import default_transport
from modules import ConfigError
from modules.azureiot import (
    IotHubSettings,
    IotHubTransport,
    desired_document_patch,
    document_slots,
    join_text,
    merge_patch,
    reported_summary,
    split_text,
    state_from_summary,
)
from modules.azureiot._transport import METHOD_PAYLOAD_BYTES, _fit
from modules.azureiot._twin import MAX_REPORTED_BYTES, MAX_STRING_BYTES, diff_patch, escape_key, unescape_key
from modules.device_state import DeploymentState, DeviceInfo, ModuleState, Refusal, ReportedState
from modules.mqtt import MqttTransport
from modules.topics import FleetTopics

TOPICS = FleetTopics("factory")


def _keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value] + [k for v in value.values() for k in _keys(v)]
    return []


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def test_names_with_dots_become_twin_keys_and_back() -> None:
    for name in ("iris.prod", "a%2Eb", "x$ y", "plain"):
        key = escape_key(name)
        assert not any(c in key for c in ".$ ")
        assert unescape_key(key) == name


def test_a_long_document_is_split_into_parts_under_4_kb_and_joined_exactly() -> None:
    text = json.dumps({"name": "big", "blob": "é€" * 4000, "n": list(range(300))})
    value = split_text(text)
    assert isinstance(value, dict) and value["parts"] > 1
    assert all(len(v.encode()) <= MAX_STRING_BYTES for k, v in value.items() if k != "parts")
    assert join_text(value) == text
    assert split_text("short") == "short"
    # a shorter value written over a longer one: parts beyond the count are left over, not read
    stale = merge_patch({"v": value}, {"v": {"parts": 1, "0": "new"}})["v"]
    assert join_text(stale) == "new"


def test_desired_patches_put_each_document_on_its_topic() -> None:
    desired: dict = {}
    for patch in (
        desired_document_patch("deployments", "iris.prod", '{"name": "iris.prod"}'),
        desired_document_patch("override", None, '{"device": "press-07"}'),
        desired_document_patch("keys", "iris.prod", '{"keys": 1}'),
        desired_document_patch("deployments", "gone", '{"name": "gone"}'),
        desired_document_patch("deployments", "gone", None),
    ):
        desired = merge_patch(desired, patch)
    desired["modelfleet"]["deployments"]["odd"] = {"not": "text"}
    assert document_slots(desired, TOPICS, "press-07") == {
        TOPICS.deployment("iris.prod"): b'{"name": "iris.prod"}',
        TOPICS.deployment("odd"): b'{"not": "text"}',  # handed on, for the intake to refuse
        TOPICS.desired("press-07"): b'{"device": "press-07"}',
        TOPICS.keys("press-07", "iris.prod"): b'{"keys": 1}',
    }
    with pytest.raises(ValueError):
        desired_document_patch("reported", "x", "{}")


def test_a_patch_carries_what_changed_and_null_for_what_went_away() -> None:
    old = {"modules": {"a": {"status": "running", "pid": 1}, "b": {"status": "running"}}, "seq": 1}
    new = {"modules": {"a": {"status": "running", "pid": 2}}, "seq": 2}
    patch = diff_patch(old, new)
    assert patch == {"modules": {"a": {"pid": 2}, "b": None}, "seq": 2}
    assert merge_patch(old, patch) == new


def _state(modules: int = 1, refusals: int = 0) -> ReportedState:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    return ReportedState(
        device_id="press-07",
        fleet="factory",
        seq=4,
        at=at,
        tags={"site": "plant-1", "gpu": True, "zones": ["a", "b"]},
        device=DeviceInfo(
            agent_version="0.1.0", platform="Linux", python="3.11", execution_providers=["CPU"]
        ),
        deployments={"iris.prod": DeploymentState(name="iris.prod", version=7, outcome="applied", at=at)},
        modules={
            f"m{i}.x": ModuleState(
                name=f"m{i}.x", status="running", health="healthy", reported_properties={"deep": {"$x": None}}
            )
            for i in range(modules)
        },
        refused=[Refusal(topic="t", deployment="bad", version=1, reason="r" * 5000, at=at)] * refusals,
    )


def test_the_reported_summary_keeps_the_fleet_view_and_obeys_the_twin_rules() -> None:
    state = _state(refusals=9)
    summary = reported_summary(json.loads(state.model_dump_json()))
    assert not any(v is None or isinstance(v, list) for v in _leaves(summary))
    assert not any(c in k for k in _keys(summary) for c in ".$ ")
    back = ReportedState.model_validate(state_from_summary(summary))
    assert back.deployments["iris.prod"].outcome == "applied"
    assert (back.modules["m0.x"].status, back.modules["m0.x"].health) == ("running", "healthy")
    assert back.modules["m0.x"].reported_properties is None  # stays with getState
    assert back.tags == {"site": "plant-1", "gpu": True, "zones": '["a", "b"]'}
    assert len(back.refused) == 5 and len(back.refused[0].reason) <= 400
    assert back.device.execution_providers == ["CPU"]


def test_a_summary_too_big_for_the_twin_drops_detail_and_says_so() -> None:
    summary = reported_summary(json.loads(_state(modules=400, refusals=5).model_dump_json()))
    assert len(json.dumps(summary).encode()) <= MAX_REPORTED_BYTES
    assert summary["truncated"] is True and summary["deployments"]


def _config(tmp_path: Path, **extra: object) -> AgentConfig:
    return AgentConfig(device_id="press-07", fleet="factory", data_dir=tmp_path, **extra)  # type: ignore[arg-type]


def test_the_hub_scheme_picks_the_control_plane(tmp_path: Path) -> None:
    will = ("t", b"", True)
    assert isinstance(default_transport(_config(tmp_path), will), MqttTransport)
    connection = "HostName=h.azure-devices.net;DeviceId=press-07;SharedAccessKey=a2V5"
    iothub = _config(tmp_path, hub="azureiot://", iothub_connection_string=connection)
    assert isinstance(default_transport(iothub, will), IotHubTransport)
    x509 = _config(
        tmp_path,
        hub="azureiot://h.azure-devices.net",
        iothub_x509_cert_file=tmp_path / "c.pem",
        iothub_x509_key_file=tmp_path / "k.pem",
    )
    assert isinstance(default_transport(x509, will), IotHubTransport)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "connection string, or an X.509"),
        (
            {"iothub_connection_string": "HostName=h;DeviceId=other;SharedAccessKey=a2V5"},
            "for device 'other'",
        ),
        ({"iothub_connection_string": "HostName=h;DeviceId=press-07"}, "SharedAccessKey"),
        ({"iothub_x509_cert_file": "/c.pem", "iothub_x509_key_file": "/k.pem"}, "names the hub"),
    ],
)
def test_iot_hub_settings_that_cannot_work_are_refused_at_start(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        default_transport(_config(tmp_path, hub="azureiot://", **settings), ("t", b"", True))


def test_a_log_answer_too_big_for_a_direct_method_keeps_its_newest_lines() -> None:
    lines = [f"line {i} " + "x" * 200 for i in range(2000)]
    body = _fit({"module": "iris", "lines": lines, "truncated": False})
    assert len(json.dumps(body).encode()) <= METHOD_PAYLOAD_BYTES
    assert body["truncated"] is True and body["lines"][-1] == lines[-1] and len(body["lines"]) < len(lines)
    assert _fit({"pong": True}) == {"pong": True}
    assert "limit" in _fit({"blob": "x" * 200_000})["error"]


class _RecordingClient:
    """What `_patch_reported` needs of the SDK's client: the patches it is asked to send."""

    def __init__(self) -> None:
        self.patches: list[dict] = []

    async def patch_twin_reported_properties(self, patch: dict) -> None:
        self.patches.append(patch)


async def test_only_news_is_written_to_the_twin_not_every_heartbeat() -> None:
    settings = IotHubSettings(
        device_id="press-07",
        fleet="factory",
        connection_string="HostName=h;DeviceId=press-07;SharedAccessKey=a2V5",  # type: ignore[arg-type]
    )
    transport = IotHubTransport(settings)
    client = _RecordingClient()
    state = json.loads(_state().model_dump_json())
    await transport._patch_reported(client, "state", reported_summary(state))
    await transport._patch_reported(client, "state", reported_summary({**state, "seq": 5, "at": "later"}))
    await transport._patch_reported(client, "presence", {"online": True, "at": "t1"})
    await transport._patch_reported(client, "presence", {"online": True, "at": "t2"})
    assert len(client.patches) == 2  # the first of each; a new seq, at or time alone is no news
    gone = {**state, "seq": 6, "modules": {}}
    await transport._patch_reported(client, "state", reported_summary(gone))
    assert client.patches[-1] == {"modelfleet": {"state": {"seq": 6, "modules": {"m0%2Ex": None}}}}
    await transport._patch_reported(client, "presence", {"online": False, "at": "t3"})
    assert client.patches[-1] == {"modelfleet": {"presence": {"online": False, "at": "t3"}}}
