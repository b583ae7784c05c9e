"""What a fleet in one process shares: free disk is sampled once per file system, not per device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edge_agent._device_info as device_info_module
from edge_agent._device_info import device_info


def test_free_disk_is_sampled_once_per_file_system_for_many_data_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_info_module, "_disk", {})
    monkeypatch.setattr(device_info_module, "_filesystem", {})
    sampled: list[Path] = []
    real = shutil.disk_usage

    def counting(path):  # type: ignore[no-untyped-def]
        sampled.append(Path(path))
        return real(path)

    monkeypatch.setattr(device_info_module.shutil, "disk_usage", counting)
    folders = [tmp_path / "devices" / f"sim-{i:04d}" for i in range(50)]
    for folder in folders:
        folder.mkdir(parents=True)
    free = {device_info(folder, [], None).disk_free_bytes for folder in folders}
    assert len(sampled) == 1 and len(free) == 1 and free.pop() is not None
    monkeypatch.setattr(device_info_module.time, "monotonic", lambda: 1e12)  # the sample is old
    device_info(folders[7], [], None)
    assert sampled == [folders[0], folders[7]]
    # a folder that is gone has no free disk to say, rather than another file system's
    assert device_info(tmp_path / "missing", [], None).disk_free_bytes is None
