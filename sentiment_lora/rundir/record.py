"""What a run leaves behind: metrics.json (one record builder for every status, written atomically) and the
test predictions."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentiment_lora import __version__
from sentiment_lora.rundir.files import atomic_target, sha256_of, write_json_atomic

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
    """What a results table needs to say which run this was. The method's own keys are in its section (LoRA's
    `lora`, null for another method, as before methods existed; methods.base.Method.config_record); `optimizer`
    holds the learning rate and weight decay the run trained with (method.lr and method.weight_decay where the
    method sets them; method.lr_scale multiplies the lr)."""
    from sentiment_lora import methods
    from sentiment_lora.methods.base import method_lr

    method = methods.of(cfg)
    sections = {methods.get(methods.DEFAULT).record_section: None}
    own = method.config_record(cfg)
    if own is not None or method.record_section in sections:
        sections[method.record_section] = own
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
        **sections,
        "optimizer": {
            "name": cfg.optimizer.name,
            "lr": method_lr(cfg),
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
            "frozen_prefix": "cache" if method.caches_whole_encoder else cfg.trainer.frozen_prefix,
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

    from sentiment_lora import methods

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    section = plain.get("method") or {"name": methods.DEFAULT}
    if section.get("lr_scale", 1.0) == 1.0:
        section.pop("lr_scale", None)  # the default scale: runs keep the digest they had before the key existed
    method = methods.get(section["name"])
    if section == {"name": methods.DEFAULT, "lr": None, "weight_decay": None}:
        plain.pop("method")  # the default method: a run of it keeps the digest it had before methods existed
    # Keys the method does not read (another method's section, a probe's frozen_prefix, a rank its budget sets):
    # runs that differ only in them are one configuration.
    for key in (*NOT_RESULTS, *method.unread_keys(cfg), *ignore):
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


def facts_fields(method, facts: dict | None) -> dict[str, Any]:
    """write_record's fields for what only the built model knows (method.run_facts), in the method's section."""
    return {} if facts is None else {method.record_section: facts}


def write_record(run_dir: Path, status: str, cfg, **fields: Any) -> None:
    """metrics.json for a run of any status: the status, the run's identifiers, then the given fields. A dict field
    named like an identifier group adds to it (`data`: what was used beside what was asked)."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    record = {"status": status, "run_format": RUN_FORMAT, "version": __version__, **identifiers(cfg)}
    for key, value in fields.items():
        record[key] = {**record[key], **value} if isinstance(record.get(key), dict) else value
    write_json_atomic(Path(run_dir) / METRICS_FILE, record)


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
    "run.yaml",  # immutable.RUN_CONFIG_FILE: predict and export build the model from it (lora.rank, targets, ...)
)  # fmt: skip


def artefact_hashes(run_dir: Path) -> dict[str, str]:
    """{file relative to the run directory: sha256} for the run's saved artefacts."""
    return {name: sha256_of(Path(run_dir) / name) for name in HASHED_FILES if (Path(run_dir) / name).is_file()}
