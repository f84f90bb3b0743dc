"""data=hf: reviews from a Hugging Face `datasets` dataset, as raw frames for pipeline.py to validate as it does files.

By name (data.name, data.config_name): `datasets.load_dataset`, which reads the local Hugging Face cache
(HF_DATASETS_CACHE, or data.cache_dir) and, unless HF_HUB_OFFLINE=1, the hub. By folder (data.path): a
`save_to_disk` folder, through `datasets.load_from_disk`. Both read Arrow files and JSON metadata: nothing is
unpickled, and `datasets` 4+ runs no dataset scripts (no remote code at all).

A DatasetDict's own train / validation / test splits are the run's given splits (without a validation split, one
is drawn from train by data.val_fraction, stratified, deterministic in data.seed); a dataset of one split (a
`Dataset`, or a DatasetDict holding only "train", as a hub dataset of one file does) is one pool, split as one
file is (data.val_fraction/test_fraction, data.n_val/n_test, or data.split_column).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from sentiment_lora.data.splits import SPLIT_NAMES, SPLITS
from sentiment_lora.errors import UserError

log = logging.getLogger(__name__)

# data.<role>_split, by role.
SPLIT_KEYS = {"train": "data.train_split", "val": "data.val_split", "test": "data.test_split"}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load(data_cfg):
    """The dataset (a Dataset or a DatasetDict) and how messages name it."""
    import datasets  # here, not at the top: it takes a second to import, and only data=hf needs it
    from huggingface_hub.errors import HfHubHTTPError

    if data_cfg.path:
        folder = Path(data_cfg.path).expanduser()
        where = f"dataset folder {folder}"
        if not folder.is_dir():
            raise UserError(f"{where}: {'not found' if not folder.exists() else 'is a file, not a folder'}")
        try:
            return datasets.load_from_disk(str(folder)), where
        except (FileNotFoundError, ValueError, OSError) as err:
            raise UserError(f"{where}: not a `datasets` save_to_disk folder ({_first_line(err)})") from None
    where = f"dataset {data_cfg.name}" + (f" (config {data_cfg.config_name})" if data_cfg.config_name else "")
    try:
        return datasets.load_dataset(data_cfg.name, data_cfg.config_name, cache_dir=data_cfg.cache_dir), where
    except (datasets.exceptions.DatasetNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        # ConnectionError (offline, or no network) is an OSError; an unknown config a ValueError.
        raise UserError(
            f"{where}: cannot be loaded ({_first_line(err)}); with HF_HUB_OFFLINE=1 only the local Hugging Face "
            "cache is read (HF_DATASETS_CACHE, or data.cache_dir)"
        ) from None


def _chosen_splits(held: list[str], data_cfg, where: str) -> dict[str, str]:
    """{role: split name} for train, val and test: data.<role>_split, else the split whose name means the role
    (train; validation, val, valid, dev; test). Without a validation split, no "val"."""
    chosen = {}
    for role in SPLITS:
        name = getattr(data_cfg, f"{role}_split")
        if name is not None and name not in held:
            raise UserError(f"{where}: no split '{name}' ({SPLIT_KEYS[role]}); it holds {', '.join(held)}")
        if name is None:
            name = next((split for split in held if SPLIT_NAMES.get(split.lower()) == role), None)
        if name is None and role == "val":
            continue  # no validation split (IMDB's has train, test, unsupervised): pipeline.py draws one from train
        if name is None:
            raise UserError(
                f"{where}: holds the splits {', '.join(held)}, none of them a {role} split; name one with "
                f"{SPLIT_KEYS[role]}=<split>"
            )
        chosen[role] = name
    if len(set(chosen.values())) < len(chosen):
        raise UserError(f"{where}: data.train_split/val_split/test_split name one split twice: {chosen}")
    return chosen


def read(data_cfg) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The dataset's frames: {"pool": frame} for one split, {train, val, test: frame} for a DatasetDict's own
    splits; and how messages name each (the dataset and its split). Only the columns the run reads are
    converted; a missing one is one line listing the dataset's columns."""
    import datasets

    loaded, where = load(data_cfg)
    if isinstance(loaded, datasets.DatasetDict):
        held = list(loaded)
        asked = any(getattr(data_cfg, f"{role}_split") is not None for role in SPLITS)
        if len(held) == 1 and not asked:
            parts = {"pool": (loaded[held[0]], f"{where}, split '{held[0]}'")}
        else:
            if data_cfg.split_column:
                raise UserError(
                    f"config data.split_column: {where} has its own splits ({', '.join(held)}); set it null"
                )
            chosen = _chosen_splits(held, data_cfg, where)
            unused = [split for split in held if split not in chosen.values()]
            if unused:
                log.info("%s: split(s) %s not used", where, ", ".join(unused))
            parts = {role: (loaded[name], f"{where}, split '{name}'") for role, name in chosen.items()}
    else:
        parts = {"pool": (loaded, where)}
    needed = [column for column in (data_cfg.text_column, data_cfg.label_column, data_cfg.split_column) if column]
    frames, wheres = {}, {}
    for role, (dataset, split_where) in parts.items():
        for column in needed:
            if column not in dataset.column_names:
                hint = "data.split_column" if column == data_cfg.split_column else "data.text_column/label_column"
                raise UserError(
                    f"{split_where}: no column '{column}' (columns: {', '.join(dataset.column_names)}); set {hint}"
                )
        frames[role], wheres[role] = dataset.select_columns(needed).to_pandas(), split_where
    return frames, wheres
