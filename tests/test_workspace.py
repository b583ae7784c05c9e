"""Workspace config: `modelfleet init`, the signing key, and flag > environment > file precedence."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from modules import ConfigError
from modules.spec import module_spec_json_schema
from publisher import Workspace
from publisher.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("MODELFLEET_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_writes_config_and_a_private_key_and_key_public_prints_pem(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--registry", "127.0.0.1:5999", "--fleet", "plant"]) == 0
    config = (clean_env / "modelfleet.toml").read_text()
    assert 'registry = "http://127.0.0.1:5999"' in config and 'fleet = "plant"' in config
    key = clean_env / "keys" / "publisher-ed25519.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    capsys.readouterr()
    (clean_env / "sub").mkdir()
    os.chdir(clean_env / "sub")  # found from a sub-folder, like git
    assert main(["key", "public"]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert load_pem_public_key(pem.encode()).public_bytes_raw()  # type: ignore[union-attr]


def test_init_refuses_to_overwrite_and_never_replaces_the_key(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init"]) == 0
    key = (clean_env / "keys" / "publisher-ed25519.pem").read_bytes()
    capsys.readouterr()
    assert main(["init"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["init", "--force", "--registry", "127.0.0.1:6000"]) == 0
    assert (clean_env / "keys" / "publisher-ed25519.pem").read_bytes() == key


def test_flag_beats_environment_beats_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Workspace.create(clean_env, registry="http://127.0.0.1:5001", fleet="from-file")
    assert Workspace.load().registry_url == "http://127.0.0.1:5001"
    monkeypatch.setenv("MODELFLEET_REGISTRY", "127.0.0.1:5002")
    monkeypatch.setenv("MODELFLEET_FLEET", "from-env")
    ws = Workspace.load()
    assert (ws.registry_url, ws.fleet) == ("http://127.0.0.1:5002", "from-env")
    ws = Workspace.load(registry="https://registry.invalid:443", fleet="from-flag")
    assert (ws.registry_url, ws.fleet) == ("https://registry.invalid:443", "from-flag")


def test_defaults_without_any_config(clean_env: Path) -> None:
    ws = Workspace.load()
    assert ws.registry_url == "http://127.0.0.1:5000"
    assert ws.hub == "mqtt://127.0.0.1:1883" and ws.fleet == "default"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("registry = [", "not valid TOML"),
        ('registy = "typo"', "registy"),
        ("registry = 5", "registry"),
    ],
)
def test_malformed_config_is_a_clear_error(clean_env: Path, content: str, message: str) -> None:
    (clean_env / "modelfleet.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        Workspace.load()


def test_missing_key_is_a_one_line_error(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "modelfleet.toml").write_text('signing_key = "nowhere.pem"\n')
    assert main(["key", "public"]) == 2
    assert "does not exist; run `modelfleet init`" in capsys.readouterr().err


def test_committed_module_spec_schema_matches_the_code() -> None:
    committed = json.loads((ROOT / "docs" / "schemas" / "module-spec.schema.json").read_text())
    assert committed == module_spec_json_schema(), "regenerate: modelfleet module schema > docs/schemas/..."
