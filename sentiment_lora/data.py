"""Reviews in, tokenized batches out: CSV validation, HTML stripping, duplicates, sampling, the stratified split,
batches.

Where the IMDB file comes from is sources.py's concern."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning
from bs4.builder import HTMLTreeBuilder
from omegaconf import OmegaConf
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from sentiment_lora import memo
from sentiment_lora.config import per_class_minimum
from sentiment_lora.errors import UserError
from sentiment_lora.sources import imdb_csv
from sentiment_lora.splits import column_splits, disjoint, pool_splits

log = logging.getLogger(__name__)

LABEL_WORDS = {"0": 0, "1": 1, "negative": 0, "positive": 1, "neg": 0, "pos": 1}
SPLITS = ("train", "val", "test")


# HTML's element names: the WHATWG HTML standard's element index, the obsolete elements it still parses (its
# "non-conforming features": <center>, <font>, <tt>, <strike>, ... as old review sites wrote them), and, for good
# measure, the lists BeautifulSoup keeps (its void and block elements; it has no complete list). html.parser takes
# any <word> for a tag, so "It was <terrible> and boring" lost its verdict, as did IMDB's own "<SPOILER>", "<grin>"
# and "<<<sigh>>>": a tag-like token whose name is not an element's is text.
SPEC_ELEMENTS = """
    a abbr address area article aside audio b base bdi bdo blockquote body br button canvas caption cite code col
    colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure footer form h1 h2
    h3 h4 h5 h6 head header hgroup hr html i iframe img input ins kbd label legend li link main map mark math menu
    meta meter nav noscript object ol optgroup option output p param picture pre progress q rp rt ruby s samp script
    search section select slot small source span strong style sub summary sup svg table tbody td template textarea
    tfoot th thead time title tr track u ul var video wbr
    acronym applet basefont bgsound big blink center dir font frame frameset image isindex keygen listing marquee
    menuitem multicol nextid nobr noembed noframes plaintext rb rtc spacer strike tt xmp"""
HTML_ELEMENTS = (
    frozenset(SPEC_ELEMENTS.split())
    | HTMLTreeBuilder.DEFAULT_EMPTY_ELEMENT_TAGS
    | HTMLTreeBuilder.DEFAULT_BLOCK_ELEMENTS
)
# "<" and the name html.parser would read as a tag's (a letter, then up to a space, "/" or ">").
TAG_START = re.compile(r"<(/?)([A-Za-z][^\s/>]*)")
# An address in angle brackets (<http://...>, <mailto:...>) goes as a link's href goes: an address says nothing of
# the film, and html.parser always dropped it, so the default IMDB draw's test set keeps its texts (and its
# eval_fingerprint, which docs/results.md's tables pair on).
ANGLE_ADDRESS = re.compile(r"<(?:[A-Za-z][A-Za-z0-9+.-]*://|mailto:)[^\s<>]*>")


def _escape_non_element(match: re.Match) -> str:
    return match.group(0) if match.group(2).lower() in HTML_ELEMENTS else "&lt;" + match.group(0)[1:]


def strip_html(text: str) -> str:
    """Markup removed and whitespace collapsed: '<br />' in IMDB reviews becomes a space, entities are decoded,
    and a tag-like word that names no HTML element ('<terrible>', '<SPOILER>') stays as text; an address in angle
    brackets is dropped."""
    if "<" not in text and "&" not in text:
        return " ".join(text.split())
    with warnings.catch_warnings():
        # A review that merely looks like a URL or file name is still a review.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        marked = TAG_START.sub(_escape_non_element, ANGLE_ADDRESS.sub(" ", text))
        soup = BeautifulSoup(marked, "html.parser")
        return " ".join(soup.get_text(" ").split())


def _label_value(raw: object) -> int | None:
    # True/False is not a label: a boolean column (is_spam, has_spoilers, ...) is more likely the wrong column.
    if isinstance(raw, (bool, np.bool_)):
        return None
    if isinstance(raw, (int, float)):
        return int(raw) if raw in (0, 1) else None
    return LABEL_WORDS.get(str(raw).strip().lower())


def read_labelled_csv(
    path: str | Path,
    text_column: str,
    label_column: str | None,
    split_column: str | None = None,
    columns_hint: str = "set data.text_column/label_column",
) -> pd.DataFrame:
    """A validated frame with columns text (str) and label (0/1), plus `split` when a split column is named,
    indexed by data row - 1; every problem is one UserError line. Without a label column (prediction), no `label`.
    `columns_hint` is the way out a missing text or label column names."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"data file {path}: is a directory, not a CSV file")
    if not path.is_file():
        raise UserError(f"data file {path}: not found")
    try:
        # No NA values: a review reading "None" or "NA" is a text like any other, an empty field an empty text.
        frame = pd.read_csv(path, dtype={text_column: "string"}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"data file {path}: is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"data file {path}: cannot be parsed as CSV ({first_line})") from None
    _refuse_repeated_columns(path, [column for column in (text_column, label_column, split_column) if column])
    for column in (text_column, label_column, split_column):
        if column is not None and column not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            raise UserError(
                f"data file {path}: no column '{column}' (columns: {found}); "
                + ("set data.split_column" if column == split_column else columns_hint)
            )
    if frame.empty:
        raise UserError(f"data file {path}: header only, no data rows")
    texts = frame[text_column]
    for index, text in texts.items():
        if not text.strip():
            raise UserError(f"data file {path}: column '{text_column}', data row {index + 1}: empty text")
        if not visible(text):
            raise UserError(f"data file {path}: column '{text_column}', data row {index + 1}: {_invisible(text)}")
    # Reviews are words: a column of numbers alone (an id, a rating, a score) is the wrong column.
    if pd.to_numeric(texts.str.strip(), errors="coerce").notna().all():
        raise UserError(
            f"data file {path}: column '{text_column}' holds only numbers (data row 1: {texts.iloc[0]!r}), not "
            f"review texts; {columns_hint}"
        )
    result = pd.DataFrame({"text": texts.astype(str).to_numpy()})
    if label_column is not None:
        result["label"] = _labels(frame[label_column], path, label_column)
    if split_column is not None:
        result["split"] = frame[split_column].astype(str).to_numpy()
    return result


def _refuse_repeated_columns(path: Path, columns: list[str]) -> None:
    """pandas renames a repeated header name (`text,label,label` reads as label and label.1) and the first column
    would be used silently, even where the two disagree: a column the run reads must be named once. The header is
    read as a data row, so as the file holds it (compressed files too); a repeated column no one reads changes
    nothing and is left alone."""
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    for column in columns:
        positions = [str(number) for number, name in enumerate(header, start=1) if name == column]
        if len(positions) > 1:
            raise UserError(
                f"data file {path}: column '{column}' appears {len(positions)} times in the header (columns "
                f"{', '.join(positions)}); rename or remove all but one"
            )


def _labels(column: pd.Series, path: Path, label_column: str) -> list[int]:
    labels: list[int] = []
    for index, raw in column.items():
        value = _label_value(raw)
        if value is None:
            raise UserError(
                f"data file {path}: column '{label_column}', data row {index + 1}: label {raw!r} is not one of "
                "0/1, negative/positive, neg/pos"
            )
        labels.append(value)
    return labels


# Letters and symbols that render as nothing: the Hangul fillers and the braille blank, which Unicode lists as
# default-ignorable or blank though their category is a letter's or a symbol's (unicodedata has no such property).
BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def visible(text: str) -> bool:
    """Whether any character of `text` shows: a letter, digit, punctuation or symbol. Not visible:
    separators (Z*: spaces), controls, format characters (Cf: zero-width space and joiners, the BOM, bidi
    controls such as U+200E and U+202E), surrogates, private-use and unassigned code points (C*), combining marks
    with nothing to combine with (M*), and BLANK_CHARACTERS."""
    return any(unicodedata.category(char)[0] in "LNPS" and char not in BLANK_CHARACTERS for char in text)


def _invisible(text: str) -> str:
    found = [f"U+{ord(char):04X}" for char in dict.fromkeys(text) if not char.isspace()]
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    return f"no visible text, only invisible characters ({shown}); remove the row or fix its text"


def stripped(frame: pd.DataFrame, where: str, row_name: str = "data row") -> pd.DataFrame:
    """The frame with its texts' HTML stripped; a text that was markup alone is one UserError line naming
    `where` and its row (the frame's index is the row - 1)."""
    frame = frame.assign(text=frame["text"].map(strip_html))
    empty = frame.index[frame["text"] == ""]
    if len(empty):
        raise UserError(f"{where}, {row_name} {empty[0] + 1}: no text left once HTML is stripped")
    # Markup around invisible characters alone ('<p>\u200b</p>') is as empty as markup alone.
    blank = frame.index[~frame["text"].map(visible)]
    if len(blank):
        row = blank[0]
        raise UserError(f"{where}, {row_name} {row + 1}: once HTML is stripped, {_invisible(frame['text'].loc[row])}")
    return frame


def distinct_reviews(frame: pd.DataFrame, path: Path, text_column: str, html: bool) -> tuple[pd.DataFrame, int]:
    """The reviews as the model sees them (HTML stripped when `html`), each text once, and how many were dropped.

    Texts are compared with whitespace collapsed, so a review copied with other line breaks or markup is one
    review: otherwise a copy could land in train and another in val or test. The frame keeps its index (data
    row - 1), so messages name the row of the file.
    """
    if html:
        frame = stripped(frame, f"data file {path}: column '{text_column}'")
    key = frame["text"].str.split().str.join(" ")
    # Refused rather than resolved: which label is right is the user's call, and dropping both copies would hide
    # a labelling error that likely has siblings. The IMDB reviews have no such pair.
    first_label = frame.groupby(key, sort=False)["label"].transform("first")
    clashes = frame.index[frame["label"] != first_label]
    if len(clashes):
        row = clashes[0]
        first = key.index[key == key[row]][0]
        raise UserError(
            f"data file {path}: data rows {first + 1} and {row + 1} hold the same review with opposite labels "
            f"({frame['label'][first]} and {frame['label'][row]}); correct or remove one"
        )
    repeated = key.duplicated()
    if repeated.any():
        log.info("data file %s: dropped %d duplicate reviews (same text once stripped)", path, repeated.sum())
    return frame[~repeated], int(repeated.sum())


def _class_counts(frame: pd.DataFrame) -> str:
    counts = frame["label"].value_counts()
    return f"{counts.get(0, 0)} negative and {counts.get(1, 0)} positive"


def balanced_sample(frame: pd.DataFrame, n_samples: int | None, seed: int, source: str = "data") -> pd.DataFrame:
    if n_samples is None or n_samples >= len(frame):
        return frame.reset_index(drop=True)
    per_class = n_samples // 2
    counts = frame["label"].value_counts()
    if len(counts) < 2 or counts.min() < per_class:
        raise UserError(
            f"{source}: data.n_samples={n_samples} needs {per_class} distinct reviews per class; there are "
            f"{_class_counts(frame)}"
        )
    parts = [frame[frame["label"] == label].sample(n=per_class, random_state=seed) for label in (0, 1)]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, source: str = "data"
) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split, deterministic in seed, with a review of each class in every split."""
    per_class = per_class_minimum(val_fraction, test_fraction)
    counts = frame["label"].value_counts()
    if len(counts) < 2 or counts.min() < per_class:
        raise UserError(
            f"{source}: a review of each class in every split takes {per_class} distinct reviews per class at "
            f"val_fraction={val_fraction:g}, test_fraction={test_fraction:g}; there are {_class_counts(frame)}"
        )
    # Sizes as whole numbers, rounded up as scikit-learn rounds a fraction, but without its float noise
    # (0.28 / 0.32 * 16 is 14.000000000000002, which it would round up to 15).
    held_out = val_fraction + test_fraction
    n_held_out = math.ceil(held_out * len(frame) - 1e-9)
    n_test = math.ceil(test_fraction / held_out * n_held_out - 1e-9)
    train, rest = train_test_split(frame, test_size=n_held_out, stratify=frame["label"], random_state=seed)
    val, test = train_test_split(rest, test_size=n_test, stratify=rest["label"], random_state=seed)
    return {name: part.reset_index(drop=True) for name, part in zip(SPLITS, (train, val, test), strict=True)}


def load_data(data_cfg) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The configured data: HTML-stripped, each review once, split (see splits.py for the three ways); and what
    metrics.json records of it (`n_samples`: the reviews used, `duplicates_dropped`, `train_dropped_as_in_eval`)."""
    columns = (data_cfg.text_column, data_cfg.label_column)
    if data_cfg.train_path:  # given splits, one file each
        paths = {name: Path(getattr(data_cfg, f"{name}_path")).expanduser() for name in SPLITS}
        frames = {name: read_labelled_csv(path, *columns) for name, path in paths.items()}
        return _given(frames, paths, data_cfg)
    path = imdb_csv(data_cfg.cache_dir) if data_cfg.source == "imdb" else Path(data_cfg.path).expanduser()
    frame = read_labelled_csv(path, *columns, split_column=data_cfg.split_column)
    if data_cfg.split_column:  # given splits, one column
        parts = column_splits(frame, frame.pop("split"), f"data file {path}, column '{data_cfg.split_column}'")
        return _given(parts, dict.fromkeys(SPLITS, path), data_cfg)
    frame, duplicates = distinct_reviews(frame, path, data_cfg.text_column, data_cfg.strip_html)
    source = f"data file {path}"
    if data_cfg.n_test is not None:  # evaluation sets drawn from the pool, then the training sample
        splits = pool_splits(frame, data_cfg.n_train, data_cfg.n_val, data_cfg.n_test, data_cfg.seed)
    else:
        frame = balanced_sample(frame, data_cfg.n_samples, data_cfg.seed, source)
        splits = split(frame, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.seed, source)
    used = sum(len(part) for part in splits.values())
    return splits, {"n_samples": used, "duplicates_dropped": duplicates, "train_dropped_as_in_eval": 0}


def _given(frames: dict[str, pd.DataFrame], paths: dict[str, Path], data_cfg) -> tuple[dict, dict[str, int]]:
    """Given splits: each review once within its split, then no text in two splits (splits.disjoint)."""
    duplicates = 0
    for name in SPLITS:
        frames[name], dropped = distinct_reviews(frames[name], paths[name], data_cfg.text_column, data_cfg.strip_html)
        duplicates += dropped
    where = ", ".join(sorted({str(path) for path in paths.values()}))
    splits, leaked = disjoint({name: frame.reset_index(drop=True) for name, frame in frames.items()}, where)
    for name in SPLITS:
        # As the fraction and pool splits require: one class in train learns nothing, and one in val or test
        # makes accuracy meaningless and ROC AUC undefined (a run reported "complete" with val accuracy 0.0).
        if splits[name]["label"].nunique() < 2:
            source = f"data file {paths[name]}" + (f", column '{data_cfg.split_column}'" * bool(data_cfg.split_column))
            raise UserError(
                f"{source}: the {name} split holds one class ({_class_counts(splits[name])}); every split needs "
                "reviews of both classes"
            )
    used = sum(len(part) for part in splits.values())
    return splits, {"n_samples": used, "duplicates_dropped": duplicates, "train_dropped_as_in_eval": leaked}


def load_splits(data_cfg) -> dict[str, pd.DataFrame]:
    """The configured data, HTML-stripped, each review once, sampled and split."""
    return load_data(data_cfg)[0]


def prepare(data_cfg, tokenizer, max_length: int) -> tuple[dict[str, pd.DataFrame], dict[str, list[dict]], dict]:
    """The splits, their tokenized rows and load_data's facts, computed once per process for a given data config
    and tokenization."""
    key = (OmegaConf.to_yaml(data_cfg), str(tokenizer.name_or_path), max_length)

    def compute():
        splits, facts = load_data(data_cfg)
        cut = {"truncation": data_cfg.truncation, "head_fraction": data_cfg.head_fraction}
        return splits, {name: encode(splits[name], tokenizer, max_length, **cut) for name in SPLITS}, facts

    (splits, encoded, facts), reused = memo.TOKENIZED_SPLITS.get(key, compute)
    if reused:
        log.info("data: reusing this process's tokenized splits")
    return splits, encoded, facts


def fingerprint(splits: dict[str, pd.DataFrame], names: tuple[str, ...] = SPLITS) -> str:
    """Short hash of the exact texts and labels of the named splits: runs with equal fingerprints saw equal data.
    With names=("val", "test") it identifies the evaluation sets, which runs trained on other samples may share."""
    digest = hashlib.sha256()
    for name in names:
        for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True):
            digest.update(f"{name}\t{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def truncate(ids: list[int], budget: int, truncation: str, head_fraction: float) -> list[int]:
    """Keep `budget` tokens of a review: the first ('head'), the last ('tail'), or the first head_fraction of
    the budget plus the last rest ('head_tail': Sun et al. 2019 found 128 + 382 tokens best for BERT on IMDB, whose
    reviews often end with their verdict). Hand-written: tokenizers truncate one side only."""
    if len(ids) <= budget:
        return ids
    if truncation == "tail":
        return ids[-budget:]
    if truncation == "head_tail":
        head = round(head_fraction * budget)
        return ids[:head] + ids[len(ids) - (budget - head) :]
    return ids[:budget]


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS] and [SEP] for BERT), found by
    encoding a word with and without them (transformers 5 has no public call that wraps given ids)."""
    bare = tokenizer("review", add_special_tokens=False)["input_ids"]
    full = tokenizer("review")["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
    return full[:start], full[start + len(bare) :]


def encode(
    frame: pd.DataFrame, tokenizer, max_length: int, truncation: str = "head", head_fraction: float = 0.25
) -> list[dict]:
    """One dict per review: token ids truncated to max_length, unpadded (batches pad to their own longest)."""
    texts, labels = list(frame["text"]), frame["label"]
    if truncation == "head":
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        ids_list, masks = encoded["input_ids"], encoded["attention_mask"]
    else:
        prefix, suffix = special_tokens_around(tokenizer)
        budget = max_length - len(prefix) - len(suffix)
        bare = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        ids_list = [prefix + truncate(ids, budget, truncation, head_fraction) + suffix for ids in bare]
        masks = [[1] * len(ids) for ids in ids_list]
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": float(label)}
        for ids, mask, label in zip(ids_list, masks, labels, strict=True)
    ]


class PaddingCollator:
    """Pads token fields with the tokenizer's collator and cached frozen-prefix states (`prefix`) with zeros."""

    def __init__(self, tokenizer):
        self.tokens = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokens([{key: row[key] for key in ("input_ids", "attention_mask", "labels")} for row in rows])
        if "prefix" in rows[0]:
            batch["prefix"] = torch.nn.utils.rnn.pad_sequence([row["prefix"] for row in rows], batch_first=True)
        return batch


def loader(
    rows: list[dict], tokenizer, batch_size: int, seed: int | None = None, group_by_length: bool = False
) -> DataLoader:
    """Training batches (seed given): seeded shuffle, or seeded length-grouped batches. Evaluation batches (no
    seed): in the order of `rows`, which `length_order` sorts so each batch pads to little more than its own.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if generator is not None and group_by_length:
        lengths = [len(row["input_ids"]) for row in rows]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=PaddingCollator(tokenizer))
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        collate_fn=PaddingCollator(tokenizer),
    )


def length_order(rows: list[dict]) -> list[int]:
    """Indices of rows from longest to shortest (stable): evaluation computes on them in this order."""
    return sorted(range(len(rows)), key=lambda index: -len(rows[index]["input_ids"]))
