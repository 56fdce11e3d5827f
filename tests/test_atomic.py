"""Atomic, non-clobbering writes and fresh numbered names."""

from __future__ import annotations

import pytest
from tunevideo.modules.files.atomic import atomic_write, unique_path


def test_atomic_write_never_clobbers_even_if_the_file_appears_meanwhile(tmp_path):
    path = tmp_path / "a.txt"

    def write_and_race(tmp):
        open(tmp, "w").write("new")
        path.write_text("someone else's")  # appears between the check and the rename

    with pytest.raises(FileExistsError, match="a.txt already exists"):
        atomic_write(path, write_and_race)
    assert path.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    atomic_write(path, lambda tmp: open(tmp, "w").write("replaced"), overwrite=True)
    assert path.read_text() == "replaced"


def test_failed_writer_leaves_nothing(tmp_path):
    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "b.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_unique_path_numbers_files_and_folders(tmp_path):
    first = unique_path(tmp_path, "clip", "mp4")
    assert first.name == "clip_00001.mp4"
    first.write_bytes(b"")
    assert unique_path(tmp_path, "clip", ".mp4").name == "clip_00002.mp4"
    (tmp_path / "demo_00001").mkdir()
    assert unique_path(tmp_path, "demo").name == "demo_00002"
