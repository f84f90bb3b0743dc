"""One writer per folder: a second process into a run directory, a sweep's grid point or an export folder that
another process is writing is refused in one line, and the first process's files are left exactly as they were.

Each test starts two real processes. The first is held in the middle of its write by tests/hold_site (after its
first epoch's checkpoint, or while its export is written) until the test lets it go, so the second meets it there
every time: the waits below are bounded polls for that moment, not sleeps that hope for it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentiment_lora import locks
from sentiment_lora import run as run_lib

from .conftest import REPO, TINY_FAST, compose_config, run_cli, write_reviews

HOLD_SITE = REPO / "tests" / "hold_site"
IN_USE = r"in use by process {pid} \(started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it, or use another {what}"
WAIT_S = 240  # at most, for the first process to reach the point where it is held


def start_held(module: str, args: list[str], cwd: Path, gate: Path, where: str = "checkpoint") -> subprocess.Popen:
    """`python -m MODULE ARGS`, held by tests/hold_site once it is writing (`where`), until `gate/go` exists."""
    gate.mkdir()
    path = os.pathsep.join(filter(None, [str(HOLD_SITE), os.environ.get("PYTHONPATH")]))  # first: its sitecustomize
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
           "SLORA_TEST_HOLD": f"{gate}:{where}"}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not (gate / "held").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the first process was never held (exit {process.returncode}): {out[-2000:]}{err[-2000:]}")
        time.sleep(0.05)
    return process


def let_go(process: subprocess.Popen, gate: Path) -> tuple[int, str]:
    (gate / "go").write_text("")
    out, err = process.communicate(timeout=WAIT_S)
    return process.returncode, out + err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, its log included, byte for byte."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.csv", n=60)


def train_args(reviews: Path, *extra: str) -> list[str]:
    return [*TINY_FAST, "trainer.precision=fp32", "data=csv", f"data.path={reviews}", *extra]


@pytest.mark.slow
def test_a_second_train_into_a_run_in_progress_is_refused_and_the_first_run_completes(tmp_path, reviews):
    run_dir = tmp_path / "R"
    first = start_held("sentiment_lora.train", train_args(reviews, f"hydra.run.dir={run_dir}"), tmp_path,
                       tmp_path / "gate")  # fmt: skip
    assert (run_dir / "checkpoint.safetensors").is_file()  # held after its first epoch
    assert not any(path.name.endswith(locks.LOCK_SUFFIX) for path in run_dir.rglob("*"))  # the lock is beside it
    during = snapshot(run_dir)

    # Another configuration, and the very same command (which would resume from the first's checkpoint): refused.
    for extra in (["lora.rank=8"], []):
        second = run_cli(train_args(reviews, *extra, f"hydra.run.dir={run_dir}"), tmp_path)
        assert second.returncode == 2, second.stderr[-2000:]
        assert len(error_lines(second)) == 1 and "Traceback" not in second.stderr
        expected = re.escape(f"error: run directory {run_dir}: ") + IN_USE.format(pid=first.pid, what="directory")
        assert re.fullmatch(expected, error_lines(second)[0]), second.stderr
        assert snapshot(run_dir) == during  # train.log and .hydra/ included

    code, output = let_go(first, tmp_path / "gate")
    assert code == 0, output[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "complete" and record["lora"]["rank"] == 4
    assert not locks.lock_file(run_dir).exists()  # released: removed with the lock
    # Free again: the same command is the usual no-op.
    again = run_cli(train_args(reviews, f"hydra.run.dir={run_dir}"), tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_two_grids_into_one_sweep_dir_the_second_is_refused_and_the_first_keeps_its_points(tmp_path, reviews):
    sweep = tmp_path / "S"
    grid = ["-m", *train_args(reviews, f"hydra.sweep.dir={sweep}")]
    first = start_held("sentiment_lora.train", [*grid, "lora.rank=1,2"], tmp_path, tmp_path / "gate")
    point = snapshot(sweep / "0")

    second = run_cli([*grid, "lora.rank=8,16"], tmp_path)
    assert second.returncode == 2, second.stderr[-2000:]
    expected = re.escape(f"error: run directory {sweep / '0'}: ") + IN_USE.format(pid=first.pid, what="directory")
    assert len(error_lines(second)) == 1 and re.fullmatch(expected, error_lines(second)[0]), second.stderr
    assert "Error executing job" not in second.stdout + second.stderr and "Traceback" not in second.stderr
    assert snapshot(sweep / "0") == point and not (sweep / "1").exists()  # the second grid stopped at its first point

    code, output = let_go(first, tmp_path / "gate")
    assert code == 0, output[-3000:]
    ranks = [json.loads((sweep / str(n) / "metrics.json").read_text())["lora"]["rank"] for n in (0, 1)]
    assert ranks == [1, 2]


@pytest.mark.slow
def test_a_killed_run_leaves_no_stale_lock_and_its_rerun_resumes(tmp_path, reviews):
    run_dir = tmp_path / "R"
    args = train_args(reviews, f"hydra.run.dir={run_dir}")
    first = start_held("sentiment_lora.train", args, tmp_path, tmp_path / "gate")
    first.send_signal(signal.SIGKILL)  # no handler runs: only the kernel releases the lock
    first.communicate(timeout=WAIT_S)

    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_two_exports_into_one_folder_the_second_is_refused(tmp_path, reviews):
    common = [*train_args(reviews), "trainer.epochs=1"]
    runs = {}
    for method in ("lora", "linear_probe"):
        runs[method] = tmp_path / method
        runs[method].mkdir()
        run_lib.train_seeds(compose_config([*common, f"method={method}"]), runs[method])
    out = tmp_path / "exports" / "E"
    first = start_held("sentiment_lora.export", [str(runs["lora"]), str(out)], tmp_path, tmp_path / "gate", "export")

    second = subprocess.run([sys.executable, "-m", "sentiment_lora.export", str(runs["linear_probe"]), str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
    assert second.returncode == 2, second.stderr[-2000:]
    expected = re.escape(f"error: export folder {out}: ") + IN_USE.format(pid=first.pid, what="folder")
    assert len(error_lines(second)) == 1 and re.fullmatch(expected, error_lines(second)[0]), second.stderr

    code, output = let_go(first, tmp_path / "gate")
    assert code == 0, output[-3000:]
    assert json.loads((out / "classifier.json").read_text())["method"] == "lora"  # the first export's, whole
    assert sorted(path.name for path in out.parent.iterdir()) == ["E"]  # no temporary folder, no lock file left


def test_the_lock_is_taken_once_per_process_and_names_its_holder(tmp_path):
    folder = tmp_path / "R"
    folder.mkdir()
    with locks.holding(folder):
        with locks.holding(folder):  # taken again in the holding process: a no-op, left held after the block
            pass
        assert locks.holds(folder) and locks.lock_file(folder).is_file()
        assert sorted(path.name for path in folder.iterdir()) == []  # beside the folder, never in it
    assert not locks.holds(folder) and not locks.lock_file(folder).exists()

    # Another holder (an open file description of its own, as another process has), its pid in the file.
    path = locks.lock_file(folder)
    path.write_text(json.dumps({"pid": 4242, "started": "2026-12-06 22:00:00 UTC"}))
    with open(path) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(locks.InUse) as refused:
            locks.acquire(folder, "export folder")
    assert str(refused.value) == (
        f"export folder {folder}: in use by process 4242 (started 2026-12-06 22:00:00 UTC); wait for it, or use "
        "another folder"
    )
    locks.acquire(folder)  # its holder gone: the file it left is simply taken
    locks.release(folder)
    assert not path.exists()


def test_a_folder_whose_parent_takes_no_lock_file_is_locked_itself(tmp_path, monkeypatch):
    folder = tmp_path / "R"
    folder.mkdir()
    real_open = os.open

    def read_only_parent(path, flags, *args):
        if str(path).endswith(locks.LOCK_SUFFIX):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(locks.os, "open", read_only_parent)
    handle = real_open(folder, os.O_RDONLY | os.O_DIRECTORY)  # another writer holds the folder itself
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(locks.InUse, match="in use by another process; wait for it, or use another directory"):
            locks.acquire(folder)
    finally:
        os.close(handle)
    with locks.holding(folder):
        assert locks.holds(folder)
    assert not locks.holds(folder) and sorted(path.name for path in tmp_path.iterdir()) == ["R"]
