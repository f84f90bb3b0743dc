"""Evaluation sets drawn from a pool, split columns, given splits made disjoint."""

from __future__ import annotations

import pandas as pd
import pytest

from sentiment_lora.data.splits import column_splits, disjoint, pool_splits
from sentiment_lora.errors import UserError


def pool(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]})


def test_pool_splits_are_balanced_disjoint_and_deterministic():
    splits = pool_splits(pool(200), n_train=40, n_val=30, n_test=60, seed=1)
    assert {name: len(part) for name, part in splits.items()} == {"train": 40, "val": 30, "test": 60}
    for part in splits.values():
        assert part["label"].value_counts().to_dict() == {0: len(part) // 2, 1: len(part) // 2}
    texts = [set(part["text"]) for part in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    again = pool_splits(pool(200), n_train=40, n_val=30, n_test=60, seed=1)
    assert all(again[name].equals(splits[name]) for name in splits)


def test_evaluation_sets_do_not_depend_on_the_training_sample_size():
    small = pool_splits(pool(200), n_train=20, n_val=30, n_test=60, seed=3)
    every = pool_splits(pool(200), n_train=None, n_val=30, n_test=60, seed=3)
    assert small["test"].equals(every["test"]) and small["val"].equals(every["val"])
    assert len(every["train"]) == 200 - 90 and set(small["train"]["text"]) <= set(every["train"]["text"])


def test_a_pool_too_small_for_the_sets_names_the_set_and_the_counts():
    with pytest.raises(UserError, match=r"validation set \(data.n_val=40\) needs 20 reviews of each label"):
        pool_splits(pool(80), n_train=None, n_val=40, n_test=60, seed=0)


def test_split_column_accepts_common_names_and_names_a_bad_row():
    frame = pool(4)
    splits = column_splits(frame, pd.Series(["train", "Validation", "dev", "TEST"]), "f.csv")
    assert [len(splits[name]) for name in ("train", "val", "test")] == [1, 2, 1]
    with pytest.raises(UserError, match=r"f.csv: data row 3: split 'holdout'"):
        column_splits(frame, pd.Series(["train", "val", "holdout", "test"]), "f.csv")


def test_given_splits_drop_training_texts_that_leak_into_evaluation_and_refuse_val_test_overlap():
    train = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    val = pd.DataFrame({"text": ["b"], "label": [1]})
    test = pd.DataFrame({"text": ["c", "d"], "label": [0, 1]})
    splits, dropped = disjoint({"train": train, "val": val, "test": test}, "given")
    assert dropped == 2 and list(splits["train"]["text"]) == ["a"]
    with pytest.raises(UserError, match="occur in both val and test"):
        disjoint({"train": train, "val": test, "test": test}, "given")
