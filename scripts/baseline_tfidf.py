#!/usr/bin/env python
"""A classical reference row for every results table: TF-IDF + logistic regression on the same split.

    python scripts/baseline_tfidf.py                                   # the default IMDB sample
    python scripts/baseline_tfidf.py data=csv data.path=reviews.csv --out outputs/baselines/mine
    python scripts/baseline_tfidf.py --n-train 400                     # a learning-curve point: tfidf_n400

Takes the same data overrides as the trainer (so the split is identical: same data_fingerprint), selects the
regularization strength C on validation, evaluates test once, and writes metrics.json in the trainer's format
with status "reference", which scripts/summarize.py shows as a reference row. --n-train N is data.n_train=N, the
harness's training size: the evaluation sets are drawn before the training sample, so every size is tested on the
same reviews (same eval_fingerprint) and summarize.py draws TF-IDF on the learning curve beside the runs.

The --out folder is a run, and follows the run rules (docs/run-directory.md): locked while the baseline writes it;
the same data config again is a no-op that prints the recorded result; another config, a training run's directory,
a folder inside a run, or a file, is refused in one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from sentiment_lora import locks
from sentiment_lora.config import CONF_DIR, register_configs, validate
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.metrics import classification_metrics
from sentiment_lora.rundir.claim import holds_run
from sentiment_lora.rundir.files import write_json_atomic
from sentiment_lora.rundir.record import METRICS_FILE, read_metrics, write_predictions


def check_out_folder(out_dir: Path) -> None:
    """--out is a folder of its own: not a file, not under one, not inside a run directory."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {out_dir}: {folder} is a file, not a folder; choose another --out")
    holder = next((folder for folder in out_dir.parents if holds_run(folder)), None)
    if holder is not None:
        raise UserError(f"--out {out_dir}: is inside the run directory {holder}; give the baseline a folder of its own")


def recorded_baseline(out_dir: Path, config: dict) -> dict | None:
    """What --out already holds: None when nothing, its record when this configuration's baseline (a no-op);
    anything else is refused, as a run directory refuses another configuration."""
    if not holds_run(out_dir):
        return None
    try:
        record = read_metrics(out_dir)
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("status") != "reference":
        status = record.get("status") if isinstance(record, dict) else "unreadable"
        raise UserError(
            f"--out {out_dir}: holds a training run (status {status!r}), which is never rewritten; give the baseline "
            "a folder of its own"
        )
    old = record.get("baseline_config") or {}
    changed = [f"{key} {old.get(key)!r} -> {config[key]!r}" for key in sorted(config) if old.get(key) != config[key]]
    if changed:
        raise UserError(
            f"--out {out_dir}: holds a TF-IDF baseline of another configuration ({'; '.join(changed[:4])}), and a run "
            f"is never overwritten; choose another --out, or move {out_dir} aside"
        )
    return record


def baseline_config(cfg) -> dict:
    """What the baseline's result depends on: the data keys, flat (data.path, data.n_train, ...)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {f"data.{key}": value for key, value in data.items()}


def run(overrides: list[str], out_dir: Path) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), job_name="baseline_tfidf"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    config = baseline_config(cfg)
    check_out_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # the lock file lies beside the folder
    with locks.holding(out_dir):
        recorded = recorded_baseline(out_dir, config)
        if recorded is not None:
            print(f"note: {out_dir} already holds this configuration's baseline: nothing to do", file=sys.stderr)
            return recorded
        metrics = fit_and_score(cfg)
        metrics["baseline_config"] = config
        out_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(out_dir, metrics.pop("test_labels"), metrics.pop("test_probabilities"))  # summarize pairs
        write_json_atomic(out_dir / METRICS_FILE, metrics)  # last: its presence means the baseline completed
    return metrics


def fit_and_score(cfg) -> dict:
    """C chosen on validation, test scored once: the record in the trainer's format, with the test scores."""
    started = time.perf_counter()
    splits, data_facts = data_lib.load_data(cfg.data)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(splits["train"]["text"])
    x_val, x_test = vectorizer.transform(splits["val"]["text"]), vectorizer.transform(splits["test"]["text"])
    y = {name: splits[name]["label"].to_numpy() for name in data_lib.SPLITS}

    best = None
    for c in (0.25, 1.0, 4.0, 16.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y["train"])
        probs = model.predict_proba(x_val)[:, 1]
        val = classification_metrics(y["val"], probs, log_loss(y["val"], probs, labels=[0, 1]))
        if best is None or (val["accuracy"], -val["loss"]) > (best[1]["accuracy"], -best[1]["loss"]):
            best = (model, {**val, "C": c})
    model, val = best
    probs = model.predict_proba(x_test)[:, 1]
    test = classification_metrics(y["test"], probs, log_loss(y["test"], probs, labels=[0, 1]))
    n_params = int(np.prod(model.coef_.shape) + model.intercept_.size)
    metrics = {
        "status": "reference",
        "model": {"name": "tfidf-logreg", "source": "sklearn", "pretrained": None, "path": None, "pooling": None},
        "data": {"name": cfg.data.name, "source": cfg.data.source, "path": cfg.data.path, "seed": cfg.data.seed,
                 "n_train": cfg.data.n_train, **data_facts},
        "data_fingerprint": data_lib.fingerprint(splits),
        "eval_fingerprint": data_lib.fingerprint(splits, ("val", "test")),
        "split_sizes": {name: len(splits[name]) for name in data_lib.SPLITS},
        "params": {"trainable": n_params, "total": n_params, "trainable_pct": 100.0,
                   "by_group": {"head": 0, "encoder": 0}},  # no method: no group of its own
        "val": val,
        "test": test,
        "history": [],
        "epochs_run": None,
        "time_s": time.perf_counter() - started,
        "test_labels": y["test"],
        "test_probabilities": probs,
    }  # fmt: skip
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="trainer config overrides for the data, e.g. data.n_samples=4000")
    parser.add_argument(
        "--n-train",
        type=int,
        metavar="N",
        help="training reviews, as the trainer's data.n_train=N (the evaluation sets stay the same at every N)",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default outputs/baselines/tfidf_default, tfidf_n<N> with a size)"
    )
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").startswith("data.n_train=")]
    try:
        if args.n_train is not None:
            if given:
                raise UserError(f"--n-train {args.n_train} and data.n_train={given[-1]}: give the training size once")
            overrides.append(f"data.n_train={args.n_train}")
        size = args.n_train if args.n_train is not None else (given[-1] if given else None)
        size = None if str(size).lower() in ("null", "none") else size
        out = args.out or Path("outputs") / "baselines" / ("tfidf_default" if size is None else f"tfidf_n{size}")
        metrics = run(overrides, out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"TF-IDF + logistic regression (C={metrics['val']['C']}): val accuracy {metrics['val']['accuracy']:.4f}, "
          f"test accuracy {metrics['test']['accuracy']:.4f}; {out / METRICS_FILE}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
