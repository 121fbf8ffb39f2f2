"""Files saved through the atomic writer get ordinary permissions, not the temporary file's private ones."""

from __future__ import annotations

import os

from workbench._util import atomic_write_text


def test_saved_files_get_the_permissions_of_any_new_file(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    saved = atomic_write_text(tmp_path / "saved.json", "{}")
    assert saved.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(saved, 0o640)  # a replaced file keeps what its owner set
    atomic_write_text(saved, "{\"a\": 1}")
    assert saved.stat().st_mode & 0o777 == 0o640 and saved.read_text() == "{\"a\": 1}"
