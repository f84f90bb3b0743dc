"""What a run leaves behind: metrics.json (one record builder for every status, written atomically) and the
test predictions."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentiment_lora import __version__

METRICS_FILE = "metrics.json"
# The layout of a run directory and its metrics.json, recorded in every metrics.json as `run_format` (with the
# package `version` that wrote it). Raise it when a change means a reader of this version would misread a run:
# predict and export refuse a run of another format. Runs written before the field existed have this layout: 1.
RUN_FORMAT = 1
PREDICTIONS_FILE = "test_predictions.csv"
# complete: trained and tested; dry_run: parameter counts only; pruned: stopped by a sweep's pruner (no test);
# failed: raised inside a sweep (the sweep goes on), with `error`.
STATUSES = ("complete", "dry_run", "pruned", "failed")


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):  # a label map: JSON keys are strings
        return {str(key): item for key, item in OmegaConf.to_container(value).items()}
    return value


def identifiers(cfg) -> dict[str, Any]:
    """What a results table needs to say which run this was. `lora` is null for a method other than LoRA (its keys
    are not read then); `optimizer` holds the learning rate and weight decay the run trained with (method.lr and
    method.weight_decay where the method sets them)."""
    lora_method = cfg.method.name == "lora"
    return {
        "method": cfg.method.name,
        "model": {
            "name": cfg.model.name,
            "source": cfg.model.source,
            "pretrained": cfg.model.pretrained,
            "path": cfg.model.path,
            "pooling": cfg.model.pooling,
            # What the default's choice weighed (choose_model.py); null when the model was named.
            "choice": _plain(cfg.model.get("choice")) or None,
        },
        "lora": {
            "rank": cfg.lora.rank,
            "alpha": cfg.lora.alpha,
            "dropout": cfg.lora.dropout,
            "targets": list(cfg.lora.targets),
            "top_layers": cfg.lora.top_layers,
            "layers": None if cfg.lora.layers is None else list(cfg.lora.layers),
            "scaling": cfg.lora.scaling,
            "dora": cfg.lora.dora,
            "loraplus_lr_ratio": cfg.lora.loraplus_lr_ratio,
            "budget": cfg.lora.budget,
        }
        if lora_method
        else None,
        "optimizer": {
            "name": cfg.optimizer.name,
            "lr": cfg.optimizer.lr if cfg.method.lr is None else cfg.method.lr,
            "weight_decay": cfg.optimizer.weight_decay if cfg.method.weight_decay is None else cfg.method.weight_decay,
        },
        "data": {
            "name": cfg.data.name,
            "source": cfg.data.source,
            "path": cfg.data.path,
            "n_samples": cfg.data.n_samples,
            "seed": cfg.data.seed,
            "truncation": cfg.data.truncation,
            # How the labels were read and whether samples were balanced (a preset name, a mapping, or null).
            "label_map": _plain(cfg.data.get("label_map")),
            "balance": cfg.data.get("balance"),
        },
        "seed": cfg.trainer.seed,
        # Speed levers that can change results, so tables can tell runs apart.
        "speed": {
            "length_grouping": cfg.trainer.length_grouping,
            # A linear probe always caches its pooled vectors, whatever trainer.frozen_prefix says.
            "frozen_prefix": "cache" if cfg.method.name == "linear_probe" else cfg.trainer.frozen_prefix,
            "attention_dropout": cfg.model.attention_dropout,
        },
        "trial": {"id": cfg.trial.id, "number": cfg.trial.number},
        "config_id": config_id(cfg),
    }


# Keys that cannot change a run's numbers: runs that differ only in them are the same configuration.
NOT_RESULTS = (
    "trainer.progress", "trainer.num_threads", "trainer.checkpoint", "trainer.keep_checkpoint", "trial", "seeds",
    "save_adapter", "data.cache_dir", "logger",
)  # fmt: skip


def config_digest(cfg, ignore: tuple[str, ...] = ()) -> str:
    """A short hash of everything in the config that can change a run's numbers (and of nothing in `ignore`)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    method = plain.get("method") or {"name": "lora"}
    if method == {"name": "lora", "lr": None, "weight_decay": None}:
        plain.pop("method")  # the default method: a LoRA run keeps the digest it had before methods existed
    elif method["name"] != "lora":
        plain.pop("lora", None)  # not read by the other methods: runs that differ only in lora.* are one config
        if method["name"] == "linear_probe":
            plain["trainer"].pop("frozen_prefix", None)  # a probe always caches its pooled vectors
    if (plain.get("lora") or {}).get("budget") is not None:
        plain["lora"].pop("rank", None)  # the budget chooses the rank: a lora.rank beside it changes nothing
    for key in (*NOT_RESULTS, *ignore):
        *parents, last = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent) or {}
        node.pop(last, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_id(cfg) -> str:
    """The configuration a run belongs to: its config without the training seed (replicates share it)."""
    return config_digest(cfg, ignore=("trainer.seed",))


def objectives_of(record: dict[str, Any], names) -> float | tuple[float, ...]:
    """What a run returns to a sweeper (cfg.objectives) from its record: one value, or a tuple of them."""
    val, params = record.get("val") or {}, record.get("params") or {}
    values = {"val_accuracy": val.get("accuracy"), "val_loss": val.get("loss")}
    values["trainable_params"] = params.get("trainable")
    returned = [math.nan if values[name] is None else float(values[name]) for name in names]
    return returned[0] if len(returned) == 1 else tuple(returned)


# How a dry run names each method's trainable groups, head last (params.by_group keys).
METHOD_GROUPS = {
    "linear_probe": (),
    "bitfit": (("encoder", "encoder biases"),),
    "ia3": (("ia3", "ia3"),),
    "full": (("encoder", "encoder"),),
}


def counts_line(cfg, rank: int | None, params: dict[str, Any]) -> str:
    """What a dry run prints: the configured architecture's exact parameter counts."""
    groups = params["by_group"]
    method = cfg.method.name
    if method != "lora":
        parts = [f"{label} {groups.get(key, 0):,}" for key, label in (*METHOD_GROUPS[method], ("head", "head"))]
        return (
            f"{cfg.model.name} {method}: trainable {params['trainable']:,} of {params['total']:,} "
            f"({params['trainable_pct']:.3f}%) = {' + '.join(parts)}"
        )
    budget = "" if cfg.lora.budget is None else f" (budget {cfg.lora.budget:,})"
    dora = f" + dora_magnitude {groups['dora_magnitude']:,}" if groups["dora_magnitude"] else ""
    return (
        f"{cfg.model.name} lora r={rank}{budget} targets={list(cfg.lora.targets)}: "
        f"trainable {params['trainable']:,} of {params['total']:,} ({params['trainable_pct']:.3f}%) "
        f"= lora {groups['lora']:,}{dora} + head {groups['head']:,}"
    )


def write_record(run_dir: Path, status: str, cfg, **fields: Any) -> None:
    """metrics.json for a run of any status: the status, the run's identifiers, then the given fields. A dict field
    named like an identifier group adds to it (`data`: what was used beside what was asked)."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    record = {"status": status, "run_format": RUN_FORMAT, "version": __version__, **identifiers(cfg)}
    for key, value in fields.items():
        record[key] = {**record[key], **value} if isinstance(record.get(key), dict) else value
    write_json_atomic(Path(run_dir) / METRICS_FILE, record)


def _jsonable(value: Any) -> Any:
    # JSON has no NaN; null is what readers of metrics.json get for an undefined metric.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process umask (0o644 under umask 022)."""
    # The umask can only be read by setting it; set it straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path in the same folder to write `path` to; renamed onto it when the block succeeds, removed
    when it fails: readers never see half a file."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    # mkstemp creates the file 0o600, which the rename would carry over: give it an ordinary file's mode, before
    # it is written (readers of a run in progress) and after (a writer like safetensors' replaces it with its own
    # 0o600 file). One rule for every file of a run: the mode open() gives under the umask.
    os.chmod(tmp, new_file_mode())
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    with atomic_target(path) as tmp, open(tmp, "w") as out:
        json.dump(_jsonable(payload), out, indent=2, allow_nan=False)
        out.write("\n")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def write_predictions(run_dir: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    frame = pd.DataFrame({"label": labels.astype(int), "prob": probs, "prediction": (probs >= 0.5).astype(int)})
    with atomic_target(Path(run_dir) / PREDICTIONS_FILE) as tmp:
        frame.to_csv(tmp, index_label="row")


# The files of a completed run whose sha256 metrics.json records (`sha256`), checked before predict, export or a
# re-run trusts them: flipped bytes in a weights file load without an error and change predictions.
HASHED_FILES = (
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "head.safetensors", "encoder.safetensors",
    "encoder_trained.safetensors", PREDICTIONS_FILE,
)  # fmt: skip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artefact_hashes(run_dir: Path) -> dict[str, str]:
    """{file relative to the run directory: sha256} for the run's saved artefacts."""
    return {name: sha256_of(Path(run_dir) / name) for name in HASHED_FILES if (Path(run_dir) / name).is_file()}
