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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from sentiment_lora.config import CONF_DIR, register_configs, validate
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.metrics import classification_metrics
from sentiment_lora.rundir.files import write_json_atomic
from sentiment_lora.rundir.record import METRICS_FILE, write_predictions


def run(overrides: list[str], out_dir: Path) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), job_name="baseline_tfidf"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
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
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir, y["test"], probs)  # per-review, so summarize can pair it with every run
    write_json_atomic(out_dir / METRICS_FILE, metrics)
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
