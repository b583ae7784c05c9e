"""The small shared pieces of the contract: tags, atomic files, the module artifact's shape."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modules import ConfigError, InvalidPackageError
from modules.artifact import (
    CODE_LAYER_TITLE,
    CodeFile,
    code_archive,
    extract_code,
    module_manifest,
    parse_module_manifest,
    parse_module_spec,
)
from modules.atomic_file import write_atomic
from modules.model_config import ModelFile
from modules.oci import media_types as mt
from modules.oci import sha256_bytes
from modules.spec import ModelRef, ModuleSpec
from modules.tags import device_tag_value, parse_device_tags, parse_tag, parse_tags

DIGEST = "sha256:" + "ab" * 32

# -- tags ---------------------------------------------------------------------------------------


def test_a_tag_splits_at_the_first_equals_and_keeps_the_value_as_typed() -> None:
    assert parse_tag("site=plant-1") == ("site", "plant-1")
    assert parse_tag("query=a=b") == ("query", "a=b")
    assert parse_tag("empty=") == ("empty", "")
    assert parse_tags(["stage=dev", "team=vision", "stage=prod"]) == {"stage": "prod", "team": "vision"}
    assert parse_tags(None) == {}


@pytest.mark.parametrize("bad", ["novalue", "=value", ""])
def test_a_tag_without_key_or_equals_is_a_config_error_naming_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match="--env expects KEY=VALUE"):
        parse_tags([bad], option="--env")


def test_device_tags_are_typed_for_target_conditions() -> None:
    tags = parse_device_tags(["gpu=true", "cpu=FALSE", "ram=4", "load=0.5", "site=plant-1", "id=007x"])
    assert tags == {"gpu": True, "cpu": False, "ram": 4, "load": 0.5, "site": "plant-1", "id": "007x"}
    assert type(tags["ram"]) is int
    assert device_tag_value("") == ""


# -- atomic files -------------------------------------------------------------------------------


def test_write_atomic_replaces_the_file_and_leaves_no_temporary_behind(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_can_make_an_owner_only_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"k", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# -- the module artifact ------------------------------------------------------------------------


def _spec(code: bool) -> ModuleSpec:
    files = [ModelFile(path="model.onnx", digest=DIGEST, size=3)]
    return ModuleSpec(
        name="svc",
        version=2,
        entry_script="score.py" if code else None,
        models=[ModelRef(name="iris", version=1, digest=DIGEST, files=files)],
        created=datetime(2024, 1, 2, tzinfo=UTC),
    )


def test_the_manifest_the_publisher_writes_is_what_readers_parse(tmp_path: Path) -> None:
    spec = _spec(code=True)
    config = spec.model_dump_json().encode()
    archive = code_archive([CodeFile("score.py", b"def init(): pass\n"), CodeFile("run.sh", b"", True)])
    body = module_manifest(spec, config, archive)

    manifest = parse_module_manifest(body, "modules/svc:2")
    assert manifest.config.digest == sha256_bytes(config)
    assert parse_module_spec(config, "modules/svc:2") == spec
    ((layer, target),) = manifest.model_targets(tmp_path)
    assert target == tmp_path / "models" / "iris" / "1" / "model.onnx"  # Azure ML v1: name/version/file
    assert layer.annotations[mt.MODEL_REF] == "iris:1"
    (code,) = manifest.code_layers
    assert (code.title, code.digest, code.size) == (CODE_LAYER_TITLE, sha256_bytes(archive), len(archive))
    assert json.loads(body)["annotations"][mt.VERSION] == "2"


def test_the_code_archive_is_reproducible_and_unpacks(tmp_path: Path) -> None:
    files = [CodeFile("score.py", b"x = 1\n"), CodeFile("bin/run", b"#!/bin/sh\n", executable=True)]
    assert code_archive(files) == code_archive(files)
    (tmp_path / "a.tar.gz").write_bytes(code_archive(files))
    extract_code(tmp_path / "a.tar.gz", tmp_path / "code")
    assert (tmp_path / "code" / "score.py").read_bytes() == b"x = 1\n"
    assert os.access(tmp_path / "code" / "bin" / "run", os.X_OK)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "escapes"])
def test_a_broken_code_layer_is_an_invalid_package(tmp_path: Path, damage: str) -> None:
    good = code_archive([CodeFile("score.py", b"x = 1\n" * 1000)])
    if damage == "truncated":
        data = good[: len(good) // 2]  # gzip raises EOFError here, not a TarError
    elif damage == "not-gzip":
        data = b"plain bytes"
    else:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo("../outside.py")
            tar.addfile(info, io.BytesIO(b""))
        data = gzip.compress(raw.getvalue())
    (tmp_path / "code.tar.gz").write_bytes(data)
    with pytest.raises(InvalidPackageError, match="cannot unpack the module's code layer"):
        extract_code(tmp_path / "code.tar.gz", tmp_path / "code")
    assert not (tmp_path / "outside.py").exists()


@pytest.mark.parametrize("kind", ["symlink-inside", "symlink-chain", "hardlink", "fifo"])
def test_links_in_a_code_layer_are_refused_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        score = tarfile.TarInfo("score.py")
        score.size = 6
        tar.addfile(score, io.BytesIO(b"x = 1\n"))
        if kind == "symlink-inside":
            link = tarfile.TarInfo("alias.py")
            link.type, link.linkname = tarfile.SYMTYPE, "score.py"
            tar.addfile(link)
        elif kind == "symlink-chain":
            # the shape of CVE-2025-4517: a chain of links whose resolved path leaves the target
            for depth in range(20):
                link = tarfile.TarInfo(f"{'d/' * depth}l")
                link.type, link.linkname = tarfile.SYMTYPE, "../" * (depth + 1)
                tar.addfile(link)
        elif kind == "hardlink":
            link = tarfile.TarInfo("same.py")
            link.type, link.linkname = tarfile.LNKTYPE, "score.py"
            tar.addfile(link)
        else:
            fifo = tarfile.TarInfo("pipe")
            fifo.type = tarfile.FIFOTYPE
            tar.addfile(fifo)
    (tmp_path / "code.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(InvalidPackageError, match="refused"):
        extract_code(tmp_path / "code.tar.gz", tmp_path / "code")
    assert list((tmp_path / "code").iterdir()) == []


def test_a_manifest_that_is_not_a_module_or_has_an_escaping_title_is_refused(tmp_path: Path) -> None:
    spec = _spec(code=False)
    config = spec.model_dump_json().encode()
    body = json.loads(module_manifest(spec, config, None))
    model_kind = {**body, "config": {**body["config"], "mediaType": mt.MODEL_CONFIG}}
    with pytest.raises(InvalidPackageError, match="not a modelfleet module artifact"):
        parse_module_manifest(json.dumps(model_kind), "models/iris:1")
    with pytest.raises(InvalidPackageError, match="not a valid image manifest"):
        parse_module_manifest(b"{}", "x")
    body["layers"][0]["annotations"][mt.TITLE] = "../../etc/passwd"
    with pytest.raises(InvalidPackageError, match="unsafe file path"):
        parse_module_manifest(json.dumps(body), "x").model_targets(tmp_path)
    with pytest.raises(InvalidPackageError, match="is invalid"):
        parse_module_spec(b'{"name": 1}', "x")
