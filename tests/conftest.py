"""Shared fixtures: tiny CSVs made on the fly, config composition, and the CLI run in a subprocess."""

from __future__ import annotations

import csv
import glob
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import sentiment_lora.train  # noqa: F401  (registers the structured configs)

# Tiny models gain nothing from a second thread, and OpenMP threads spinning against other work on a 2-core
# machine slow each step a hundredfold: one thread here and in every subprocess the tests start.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]

# SENTIMENT_LORA_TEST_AUTO_BF16=1 runs the suite as a CPU with native bf16 (AVX512-BF16/AMX) would: there
# trainer.precision=auto resolves to bf16 autocast. SENTIMENT_LORA_TEST_AUTO_BF16=0 runs it as an AVX2-only CPU
# would: auto resolves to fp32. Unset, auto resolves as this machine does. A test that compares numbers without
# pinning trainer.precision passes on one kind of machine only. The fixture below covers this process, a
# sitecustomize (tests/bf16_site) every Python subprocess the tests start. Run the suite both ways when touching
# numerics or tests that compare them.
FORCED_AUTO_BF16 = {"1": True, "0": False}.get(os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16", ""))
AUTO_BF16 = FORCED_AUTO_BF16 is True
if FORCED_AUTO_BF16 is not None:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "tests" / "bf16_site"), os.environ.get("PYTHONPATH")])
    )


@pytest.fixture(autouse=True, scope="session")
def _auto_precision_as_forced():
    if FORCED_AUTO_BF16 is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sentiment_lora.runtime.cpu_supports_bf16", lambda: FORCED_AUTO_BF16)
        yield


CONF = REPO / "conf"

POSITIVE = ["great", "wonderful", "loved", "excellent", "superb", "moving", "brilliant", "fun"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull", "bad", "weak", "tedious"]
FILLER = ["the", "movie", "plot", "actor", "film", "scene", "story", "ending", "cast", "script"]


def write_reviews(path: Path, n: int = 80, seed: int = 0, html: bool = True) -> Path:
    """A separable toy sentiment CSV (text,label) with HTML markup like IMDB's."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = rng.choices(POSITIVE if label else NEGATIVE, k=4) + rng.choices(FILLER, k=6)
            rng.shuffle(words)
            text = " ".join(words)
            writer.writerow([f"<p>{text}<br /><br />the end</p>" if html else text, label])
    return path


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.csv")


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m sentiment_lora.train ARGS` as a user would run it, offline, without progress bars."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "sentiment_lora.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_FAST = [
    "model=tiny",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.max_length=32",
    "optimizer.lr=1e-2",
    "trainer.progress=false",
]


# ---- a PostgreSQL server on loopback (the scale-out and credential tests) ----


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or (
        [shutil.which("initdb")] if shutil.which("initdb") else []
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Postgres:
    port: int
    password: str  # the password of the role `slora`, which logs in with it (scram-sha-256), not by trust

    @property
    def url(self) -> str:
        """The superuser, trusted on loopback: no password anywhere."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def password_url(self, database: str = "slora") -> str:
        """The role `slora` with its password in the URL, on a database it owns (slora or slora_mlflow)."""
        return f"postgresql://slora:{self.password}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found; .ci/run installs them")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # PostgreSQL refuses to run as root: run it as the postgres user in a directory that user owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    datadir = Path(tempfile.mkdtemp(prefix="slora-pg-"))
    if as_user:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    # The first matching line wins: role slora must give its password, even on loopback.
    hba = datadir / "pg_hba.conf"
    hba.write_text("host all slora 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    options = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(datadir / "log"),
                    "-w", "start"], check=True, capture_output=True)  # fmt: skip
    server = Postgres(port, "Xk9PgSecretPw")
    psql = [*as_user, str(bindir / "psql"), "-h", str(datadir), "-p", str(port), "-U", "postgres", "-q", "-c"]
    try:
        for statement in (f"CREATE ROLE slora LOGIN PASSWORD '{server.password}'", "CREATE DATABASE slora OWNER slora",
                          "CREATE DATABASE slora_mlflow OWNER slora"):  # fmt: skip
            subprocess.run([*psql, statement], check=True, capture_output=True)
        yield server
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    return postgres.url
