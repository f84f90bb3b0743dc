"""How reviews become train / validation / test sets. Three ways, one contract: disjoint splits, deterministic in
the seed, every problem a one-line UserError.

- Evaluation sets from a pool (`data.n_val`, `data.n_test`: IMDB's default): the test set is drawn first from the
  whole pool, then the validation set from the rest, then the training sample from what remains: half of each
  class with data.balance (the IMDB preset), else in the pool's class shares (a user's file is never silently
  re-balanced). The evaluation sets therefore depend on the pool and the seed only, not on the training sample's
  size, so runs trained on different samples are still tested on the same reviews (and pair in summaries).
- Fractions of one file (`data.val_fraction`, `data.test_fraction`): a stratified split, as for small CSVs.
- Given splits (`data.split_column`, or `data.train_path` + `data.val_path` + `data.test_path`): a published
  split such as SST-2's or IMDB's own. A text in the training split that also occurs in an evaluation split is
  dropped from training (and counted); a text in both evaluation splits is an error.
"""

from __future__ import annotations

import logging

import pandas as pd
from sklearn.model_selection import train_test_split

from sentiment_lora.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Names a split column may use for each split (case-insensitive).
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}  # fmt: skip


def balanced_draw(frame: pd.DataFrame, n: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n reviews, half of each label, drawn deterministically; and the reviews left over."""
    per_class = n // 2
    counts = frame["label"].value_counts()
    if len(counts) < 2 or counts.min() < per_class:
        held = {int(label): int(count) for label, count in counts.items()}
        raise UserError(f"data: the {what} needs {per_class} reviews of each label, only {held} are left for it")
    drawn = pd.concat([frame[frame["label"] == label].sample(n=per_class, random_state=seed) for label in (0, 1)])
    drawn = drawn.sample(frac=1.0, random_state=seed)
    return drawn.reset_index(drop=True), frame.drop(index=drawn.index)


def stratified_draw(frame: pd.DataFrame, n: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n reviews in the frame's own class shares (scikit-learn's stratified split), drawn deterministically, with a
    review of each class; and the reviews left over."""
    counts = frame["label"].value_counts()
    held = {int(label): int(count) for label, count in counts.items()}
    if n >= len(frame) or len(counts) < 2 or counts.min() < 2:
        raise UserError(f"data: the {what} cannot be drawn in the data's class shares from the {held} left for it")
    rest, drawn = train_test_split(frame, test_size=n, stratify=frame["label"], random_state=seed)
    if drawn["label"].nunique() < 2:
        raise UserError(
            f"data: the {what} drawn in the data's class shares from {held} holds one class; draw more reviews "
            "(or data.balance=true for half of each)"
        )
    return drawn.reset_index(drop=True), rest


def pool_splits(
    frame: pd.DataFrame, n_train: int | None, n_val: int, n_test: int, seed: int, balance: bool = True
) -> dict:
    """Test, then validation, then training reviews drawn from one pool (see the module docstring): half of each
    class (`balance`, the IMDB preset) or in the pool's class shares."""
    draw = balanced_draw if balance else stratified_draw
    pool = frame.reset_index(drop=True)
    test, rest = draw(pool, n_test, seed, f"test set (data.n_test={n_test})")
    val, rest = draw(rest, n_val, seed, f"validation set (data.n_val={n_val})")
    if n_train is None or (not balance and n_train == len(rest)):
        train = rest.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    else:
        train, _ = draw(rest, n_train, seed, f"training sample (data.n_train={n_train})")
    return {"train": train, "val": val, "test": test}


def column_splits(frame: pd.DataFrame, column: pd.Series, source: str) -> dict[str, pd.DataFrame]:
    """Rows assigned by a split column (train / val, validation, dev / test)."""
    names = column.astype(str).str.strip().str.lower().map(SPLIT_NAMES)
    unknown = names.isna()
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        # The index is the data row - 1 (with gaps where data.label_map dropped rows).
        raise UserError(
            f"{source}: data row {column.index[row] + 1}: split {column.iloc[row]!r} is not one of train, val "
            "(validation, dev), test"
        )
    return {name: frame[(names == name).to_numpy()].reset_index(drop=True) for name in SPLITS}


def disjoint(splits: dict[str, pd.DataFrame], source: str) -> tuple[dict[str, pd.DataFrame], int]:
    """Given splits made disjoint: training texts that occur in an evaluation split are dropped (their count is
    returned); a text in both evaluation splits is an error."""
    shared = set(splits["val"]["text"]) & set(splits["test"]["text"])
    if shared:
        text = next(iter(shared))
        raise UserError(f"{source}: {len(shared)} text(s) occur in both val and test, e.g. {text[:60]!r}")
    evaluation = set(splits["val"]["text"]) | set(splits["test"]["text"])
    leaked = splits["train"]["text"].isin(evaluation)
    if leaked.any():
        log.warning("data: %d training review(s) also occur in val/test; dropped from training", int(leaked.sum()))
    for name in SPLITS:
        if splits[name].empty:
            raise UserError(f"{source}: the {name} split is empty")
    return {**splits, "train": splits["train"][~leaked].reset_index(drop=True)}, int(leaked.sum())
