from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replica import Replica
from replica.cli import main


def test_status_of_a_new_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--data", str(tmp_path / "new")]) == 0
    assert main(["status", "--data", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "Replica: r" in out and "Documents: 0" in out and "Data unsynced: 0" in out


def test_status_lists_documents_and_unsynced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Replica.open(tmp_path, replica_id="tablet-3") as replica:
        rows = replica.doc("campaign-7/households").records("households")
        rows.put("h1", {"name": "Ada"})
        rows.put("h2", {"name": "Bo"})
        replica.doc("campaign-7/notes").text("day").insert(0, "rain")
    assert main(["status", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Replica: tablet-3" in out
    assert "campaign-7/households  (households: 2 records)" in out
    assert "campaign-7/notes  (text day: 4 characters)" in out
    assert out.rstrip().endswith("Data unsynced: 3")


def test_locked_data_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Replica.open(tmp_path):
        assert main(["status", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Error [replica_locked]" in err and "retrying may help" in err


def test_console_script_runs(tmp_path: Path) -> None:
    command = shutil.which("replica") or ""
    args = [command] if command else [sys.executable, "-m", "replica.cli"]
    Replica.open(tmp_path, replica_id="tablet-1").close()
    done = subprocess.run([*args, "status", "--data", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Data unsynced: 0" in done.stdout
