"""Reviews in, tokenized batches out: reading CSV, TSV, JSONL and Parquet files, validation, label maps, HTML
stripping, duplicates, sampling, the stratified split, batches.

Where the IMDB file comes from is sources.py's concern, a `datasets` dataset (data=hf) data/hf.py's."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import lzma
import math
import re
import unicodedata
import warnings
import zipfile
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
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
from sentiment_lora.data import hf as hf_data
from sentiment_lora.data import labels as labels_lib
from sentiment_lora.data.splits import column_splits, disjoint, pool_splits, stratified_draw
from sentiment_lora.errors import UserError
from sentiment_lora.sources import imdb_csv

log = logging.getLogger(__name__)

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
# "<", the name html.parser would read as a tag's (a letter, then up to a space, "/" or ">"), what follows up to the
# tag's ">" (quoted values may hold "<" or ">"), and that ">" when there is one.
TAG = re.compile(r"""<(/?)([A-Za-z][^\s/>]*)((?:"[^"]*"|'[^']*'|[^<>"'])*)(>?)""")
# One attribute: a name, and a value after "=" (quoted or bare), as HTML writes it.
ATTRIBUTE = re.compile(r"""\s*([^\s"'<>/=]+)(\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?\s*""")
# HTML's boolean attributes, the ones written without a value (<input disabled>, <hr noshade>). html.parser takes
# any word after an element's name for one, so "a<b and c>d" lost "b and c" as a <b> tag with attributes "and"
# and "c": a word without a value that is no boolean attribute makes the tag text.
BOOLEAN_ATTRIBUTES = frozenset(
    """
    allowfullscreen async autofocus autoplay checked compact controls declare default defer disabled formnovalidate
    hidden inert ismap itemscope loop multiple muted nohref nomodule noresize noshade novalidate nowrap open
    playsinline readonly required reversed selected truespeed""".split()
)
# An address in angle brackets (<http://...>, <mailto:...>) goes as a link's href goes: an address says nothing of
# the film, and html.parser always dropped it, so the default IMDB draw's test set keeps its texts (and its
# eval_fingerprint, which docs/results.md's tables pair on).
ANGLE_ADDRESS = re.compile(r"<(?:[A-Za-z][A-Za-z0-9+.-]*://|mailto:)[^\s<>]*>")


def _attributes_are_markup(attributes: str) -> bool:
    """Whether what follows a tag's name reads as HTML attributes (a lone "/" of <br/> included)."""
    attributes = attributes.strip().removesuffix("/")
    position = 0
    while position < len(attributes):
        found = ATTRIBUTE.match(attributes, position)
        if not found or (found.group(2) is None and found.group(1).lower() not in BOOLEAN_ATTRIBUTES):
            return False
        position = found.end()
    return True


def _escape_non_element(match: re.Match) -> str:
    """A tag that names an HTML element, with attributes that read as HTML's, stays markup; any other is text. Hand-
    written: html.parser and BeautifulSoup take any <word ...> for a tag, and no library tells a tag from prose."""
    closed = bool(match.group(4))  # without its ">", html.parser decides as it always did, on the name alone
    if match.group(2).lower() in HTML_ELEMENTS and (not closed or _attributes_are_markup(match.group(3))):
        return match.group(0)
    return "&lt;" + match.group(0)[1:]


def strip_html(text: str) -> str:
    """Markup removed and whitespace collapsed: '<br />' in IMDB reviews becomes a space, entities are decoded,
    and a tag-like word that names no HTML element ('<terrible>', '<SPOILER>') stays as text; an address in angle
    brackets is dropped."""
    if "<" not in text and "&" not in text:
        return " ".join(text.split())
    with warnings.catch_warnings():
        # A review that merely looks like a URL or file name is still a review.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        marked = TAG.sub(_escape_non_element, ANGLE_ADDRESS.sub(" ", text))
        soup = BeautifulSoup(marked, "html.parser")
        return " ".join(soup.get_text(" ").split())


# Data file extensions and the format each names; a compression suffix after them is taken off first.
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}  # fmt: skip
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")
FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSONL", "parquet": "Parquet"}
# What reading a compressed file whose bytes are not what its name says raises (gzip, bz2, zip, lzma, zstandard).
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)
# The separators a CSV header is sniffed among (data.delimiter=null).
SNIFFED = ",;\t|"


def file_format(path: Path, format: str = "auto") -> str:
    """data.format, or under `auto` the format the file's extension names (CSV for any other name, as before)."""
    if format != "auto":
        return format
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return EXTENSIONS.get(suffixes[-1] if suffixes else "", "csv")


def _first_line(path: Path) -> str:
    # pandas opens the file (compressed or not); a separator no header holds gives the header line whole.
    head = pd.read_csv(path, sep="\x1f", header=None, nrows=1, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    return str(head.iloc[0, 0]) if not head.empty else ""


def sniff_delimiter(path: Path) -> str:
    """The separator of a CSV file's header line among , ; tab | (Python's csv.Sniffer); ',' when it cannot tell
    (a one-column header, say)."""
    try:
        return csv.Sniffer().sniff(_first_line(path), delimiters=SNIFFED).delimiter
    except (csv.Error, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return ","


def read_table(
    path: Path, text_column: str, format: str = "auto", delimiter: str | None = None
) -> tuple[pd.DataFrame, str | None]:
    """The file as pandas reads it (a UserError line when it cannot), and its field separator (None for JSONL
    and Parquet). CSV texts are read as written: no NA values, so a review reading "None" or "NA" is a text."""
    path = Path(path).expanduser()
    kind = file_format(path, format)
    if path.is_dir():
        raise UserError(f"data file {path}: is a directory, not a {FORMAT_NAMES[kind]} file")
    if not path.is_file():
        raise UserError(f"data file {path}: not found")
    try:
        sep = "\t" if kind == "tsv" else delimiter or (sniff_delimiter(path) if kind == "csv" else ",")
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(path, sep=sep, dtype={text_column: "string"}, keep_default_na=False)
        elif kind == "jsonl":
            # dtype=False: each value as JSON typed it (a "01" id stays a text, a label true stays a boolean).
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            # Parquet compresses inside; a .parquet.gz is opened by fsspec (a `datasets` dependency), which
            # pandas' read_parquet does not do itself.
            with fsspec.open(str(path), "rb", compression="infer") as handle:
                frame = pd.read_parquet(io.BytesIO(handle.read()))
    except pd.errors.EmptyDataError:
        raise UserError(f"data file {path}: is empty (no header, no rows)") from None
    except DECOMPRESSION_ERRORS as err:
        # Not what its name says: plain text named .gz, a truncated .gz, a damaged .bz2 (pandas infers the
        # compression from the name). OSError covers gzip's BadGzipFile and bz2's "Invalid data stream".
        compression = next((suffix for suffix in path.suffixes[::-1] if suffix.lower() in COMPRESSIONS), None)
        if compression is None:
            raise UserError(f"data file {path}: cannot be read ({err})") from None
        raise UserError(
            f"data file {path}: is not valid {compression} data ({err}); its name says {compression}: recompress "
            f"it, or rename it without {compression} if it is not compressed"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, pa.ArrowException) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"data file {path}: cannot be parsed as {FORMAT_NAMES[kind]} ({first_line})") from None
    if kind == "jsonl" and frame.empty and not len(frame.columns):
        raise UserError(f"data file {path}: is empty (no rows)")
    return frame, sep if kind in ("csv", "tsv") else None


def read_labelled(
    path: str | Path,
    text_column: str,
    label_column: str | None,
    split_column: str | None = None,
    columns_hint: str = "set data.text_column/label_column",
    format: str = "auto",
    delimiter: str | None = None,
    label_map: object = None,
) -> tuple[pd.DataFrame, int]:
    """A data file (CSV, TSV, JSONL or Parquet: `file_format`) as `labelled` makes it, and the rows whose label
    `label_map` drops."""
    path = Path(path).expanduser()
    frame, sep = read_table(path, text_column, format, delimiter)
    columns = [column for column in (text_column, label_column, split_column) if column]
    if sep is not None:
        refuse_repeated_columns(path, columns, sep)
    return labelled(frame, f"data file {path}", text_column, label_column, split_column, columns_hint, label_map)


def labelled(
    frame: pd.DataFrame,
    where: str,
    text_column: str,
    label_column: str | None,
    split_column: str | None = None,
    columns_hint: str = "set data.text_column/label_column",
    label_map: object = None,
) -> tuple[pd.DataFrame, int]:
    """A validated frame with columns text (str) and label (0/1), plus `split` when a split column is named,
    indexed by data row - 1, and how many rows label_map dropped; every problem is one UserError line starting
    with `where` (a file, a dataset's split). Without a label column (prediction), no `label`. `columns_hint` is
    the way out a missing text or label column names."""
    for column in (text_column, label_column, split_column):
        if column is not None and column not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            raise UserError(
                f"{where}: no column '{column}' (columns: {found}); "
                + ("set data.split_column" if column == split_column else columns_hint)
            )
    for column in (text_column, label_column, split_column):
        if column is not None and list(frame.columns).count(column) > 1:
            raise UserError(f"{where}: column '{column}' appears {list(frame.columns).count(column)} times")
    if frame.empty:
        raise UserError(f"{where}: header only, no data rows")
    frame = frame.reset_index(drop=True)
    texts = []
    for index, text in enumerate(frame[text_column]):
        if not isinstance(text, str):  # JSONL and Parquet type their values; CSV's are read as texts
            if labels_lib.key_of(text) is None:
                raise UserError(f"{where}: column '{text_column}', data row {index + 1}: no text (null)")
            if isinstance(text, (dict, list, tuple, np.ndarray)):  # a JSON object or array, a Parquet list or struct
                kind = "an object" if isinstance(text, dict) else "a list"
                raise UserError(f"{where}: column '{text_column}', data row {index + 1}: {kind}, not a text")
            text = str(text)
        if not text.strip():
            raise UserError(f"{where}: column '{text_column}', data row {index + 1}: empty text")
        if not visible(text):
            raise UserError(f"{where}: column '{text_column}', data row {index + 1}: {_invisible(text)}")
        texts.append(text)
    texts = pd.Series(texts, dtype=object)
    # Reviews are words: a column of numbers alone (an id, a rating, a score) is the wrong column.
    if pd.to_numeric(texts.str.strip(), errors="coerce").notna().all():
        raise UserError(
            f"{where}: column '{text_column}' holds only numbers (data row 1: {texts.iloc[0]!r}), not "
            f"review texts; {columns_hint}"
        )
    result = pd.DataFrame({"text": texts.to_numpy(dtype=object)})
    if split_column is not None:
        result["split"] = frame[split_column].astype(str).to_numpy()
    if label_column is None:
        return result, 0
    result["label"] = label_values(frame[label_column], where, label_column, labels_lib.resolve(label_map))
    kept = result["label"].notna()
    if not kept.all():
        log.info("%s: %d rows dropped, their label mapped to null (data.label_map)", where, int((~kept).sum()))
    return result[kept].astype({"label": int}), int((~kept).sum())


def refuse_repeated_columns(path: Path, columns: list[str], sep: str = ",") -> None:
    """pandas renames a repeated header name (`text,label,label` reads as label and label.1) and the first column
    would be used silently, even where the two disagree: a column the run reads must be named once. The header is
    read as a data row, so as the file holds it (compressed files too); a repeated column no one reads changes
    nothing and is left alone."""
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    for column in columns:
        positions = [str(number) for number, name in enumerate(header, start=1) if name == column]
        if len(positions) > 1:
            raise UserError(
                f"data file {path}: column '{column}' appears {len(positions)} times in the header (columns "
                f"{', '.join(positions)}); rename or remove all but one"
            )


def label_values(column: pd.Series, where: str, label_column: str, label_map: dict | None) -> list[float]:
    """0/1 per row, NaN where the map drops the row; a value the map (or the default spellings) lacks is one
    line naming it and its row."""
    mapping = labels_lib.DEFAULT_LABELS if label_map is None else label_map
    values: list[float] = []
    for index, raw in column.items():
        key = labels_lib.key_of(raw)
        raw = raw.item() if isinstance(raw, np.generic) else raw  # named as the file wrote it: 7, not np.int64(7)
        if key not in mapping:
            if key is None:
                problem = "no label (an empty value)"
            elif label_map is None:
                problem = f"label {raw!r} is not one of {labels_lib.DEFAULT_SPELLINGS}"
                if isinstance(raw, (bool, np.bool_)):
                    problem += " (for true/false labels, set data.label_map=boolean)"
                elif key in {k for preset in ("stars", "yes_no", "signed") for k in labels_lib.resolve(preset)}:
                    problem += "; set data.label_map (presets: stars, yes_no, signed, boolean)"
            else:
                problem = f"label {raw!r} is not in data.label_map (which maps {', '.join(mapping)})"
            raise UserError(f"{where}: column '{label_column}', data row {index + 1}: {problem}")
        value = mapping[key]
        values.append(math.nan if value is None else float(value))
    return values


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


def distinct_reviews(frame: pd.DataFrame, where: str, text_column: str, html: bool) -> tuple[pd.DataFrame, int]:
    """The reviews as the model sees them (HTML stripped when `html`), each text once, and how many were dropped.

    Texts are compared with whitespace collapsed, so a review copied with other line breaks or markup is one
    review: otherwise a copy could land in train and another in val or test. The frame keeps its index (data
    row - 1), so messages name the row of the file.
    """
    if html:
        frame = stripped(frame, f"{where}: column '{text_column}'")
    key = frame["text"].str.split().str.join(" ")
    # Refused rather than resolved: which label is right is the user's call, and dropping both copies would hide
    # a labelling error that likely has siblings. The IMDB reviews have no such pair.
    first_label = frame.groupby(key, sort=False)["label"].transform("first")
    clashes = frame.index[frame["label"] != first_label]
    if len(clashes):
        row = clashes[0]
        first = key.index[key == key[row]][0]
        raise UserError(
            f"{where}: data rows {first + 1} and {row + 1} hold the same review with opposite labels "
            f"({frame['label'][first]} and {frame['label'][row]}); correct or remove one"
        )
    repeated = key.duplicated()
    if repeated.any():
        log.info("%s: dropped %d duplicate reviews (same text once stripped)", where, repeated.sum())
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


def sample(frame: pd.DataFrame, n_samples: int | None, seed: int, balance: bool, source: str = "data") -> pd.DataFrame:
    """data.n_samples distinct reviews: half of each class (data.balance), or in the data's own class shares, so
    a user's imbalanced file is never silently re-balanced."""
    if balance:
        return balanced_sample(frame, n_samples, seed, source)
    if n_samples is None or n_samples >= len(frame):
        return frame.reset_index(drop=True)
    return stratified_draw(frame, n_samples, seed, f"sample (data.n_samples={n_samples})")[0]


def load_data(data_cfg) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The configured data: HTML-stripped, each review once, split (see data/splits.py for the three ways); and what
    metrics.json records of it (`n_samples`: the reviews used, `duplicates_dropped`, `train_dropped_as_in_eval`,
    `labels_dropped`: rows whose label data.label_map maps to null)."""
    columns = (data_cfg.text_column, data_cfg.label_column)
    reading = {"format": data_cfg.format, "delimiter": data_cfg.delimiter, "label_map": data_cfg.label_map}
    if data_cfg.source == "hf":
        raw, wheres = hf_data.read(data_cfg)
        read = {role: labelled(frame, wheres[role], *columns, data_cfg.split_column, label_map=data_cfg.label_map)
                for role, frame in raw.items()}  # fmt: skip
        dropped = sum(count for _, count in read.values())
        if "pool" not in read:  # the DatasetDict's own splits
            if data_cfg.n_samples is not None or data_cfg.n_test is not None:
                key = "data.n_samples" if data_cfg.n_samples is not None else "data.n_val/n_test"
                raise UserError(f"config {key}: is not used with the dataset's own splits ({wheres['train']}, ...)")
            frames = {role: frame for role, (frame, _) in read.items()}
            if "val" not in frames:
                frames["train"], frames["val"] = validation_from_train(frames["train"], data_cfg, wheres["train"])
                wheres["val"] = wheres["train"]
            return _given(frames, wheres, data_cfg, dropped)
        (frame, _), where = read["pool"], wheres["pool"]
    elif data_cfg.train_path:  # given splits, one file each
        paths = {name: Path(getattr(data_cfg, f"{name}_path")).expanduser() for name in SPLITS}
        read = {name: read_labelled(path, *columns, **reading) for name, path in paths.items()}
        wheres = {name: f"data file {path}" for name, path in paths.items()}
        dropped = sum(count for _, count in read.values())
        return _given({name: frame for name, (frame, _) in read.items()}, wheres, data_cfg, dropped)
    else:
        path = imdb_csv(data_cfg.cache_dir) if data_cfg.source == "imdb" else Path(data_cfg.path).expanduser()
        frame, dropped = read_labelled(path, *columns, split_column=data_cfg.split_column, **reading)
        where = f"data file {path}"
    if data_cfg.split_column:  # given splits, one column
        split_where = f"{where}, column '{data_cfg.split_column}'"
        parts = column_splits(frame, frame.pop("split"), split_where)
        return _given(parts, dict.fromkeys(SPLITS, where), data_cfg, dropped, split_where)
    frame, duplicates = distinct_reviews(frame, where, data_cfg.text_column, data_cfg.strip_html)
    if data_cfg.n_test is not None:  # evaluation sets drawn from the pool, then the training sample
        splits = pool_splits(frame, data_cfg.n_train, data_cfg.n_val, data_cfg.n_test, data_cfg.seed, data_cfg.balance)
    else:
        frame = sample(frame, data_cfg.n_samples, data_cfg.seed, data_cfg.balance, where)
        splits = split(frame, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.seed, where)
    used = sum(len(part) for part in splits.values())
    return splits, {"n_samples": used, "duplicates_dropped": duplicates, "train_dropped_as_in_eval": 0,
                    "labels_dropped": dropped}  # fmt: skip


def validation_from_train(train: pd.DataFrame, data_cfg, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A dataset with train and test splits but no validation split: data.val_fraction of train becomes the
    validation set, stratified (half of each class with data.balance), deterministic in data.seed. Rows keep their
    index, so messages still name the train split's rows; a copy of a validation review left in train is dropped
    from it by splits.disjoint, as with any given splits."""
    n_val = math.ceil(data_cfg.val_fraction * len(train) - 1e-9)
    what = f"validation set drawn from the train split (data.val_fraction={data_cfg.val_fraction:g})"
    counts = train["label"].value_counts()
    per_class = n_val // 2 if data_cfg.balance else 2
    if len(counts) < 2 or counts.min() < per_class or n_val < 2:
        raise UserError(
            f"{where}: the {what} needs {per_class} reviews of each class; there are {_class_counts(train)}"
        )
    if data_cfg.balance:
        val = pd.concat([train[train["label"] == label].sample(n=per_class, random_state=data_cfg.seed)
                         for label in (0, 1)]).sample(frac=1.0, random_state=data_cfg.seed)  # fmt: skip
        rest = train.drop(index=val.index)
    else:
        rest, val = train_test_split(train, test_size=n_val, stratify=train["label"], random_state=data_cfg.seed)
    log.info("%s: no validation split; %d of its %d reviews drawn as the validation set", where, len(val), len(train))
    return rest.sort_index(), val


def _given(
    frames: dict[str, pd.DataFrame], wheres: dict[str, str], data_cfg, dropped: int, split_where: str | None = None
) -> tuple[dict, dict[str, int]]:
    """Given splits: each review once within its split, then no text in two splits (splits.disjoint). `wheres`
    name each split's file or dataset split; `split_where` the split column, when one assigned them."""
    duplicates = 0
    for name in SPLITS:
        frames[name], count = distinct_reviews(frames[name], wheres[name], data_cfg.text_column, data_cfg.strip_html)
        duplicates += count
    where = ", ".join(dict.fromkeys(wheres.values()))
    splits, leaked = disjoint({name: frame.reset_index(drop=True) for name, frame in frames.items()}, where)
    for name in SPLITS:
        # As the fraction and pool splits require: one class in train learns nothing, and one in val or test
        # makes accuracy meaningless and ROC AUC undefined (a run reported "complete" with val accuracy 0.0).
        if splits[name]["label"].nunique() < 2:
            raise UserError(
                f"{split_where or wheres[name]}: the {name} split holds one class ({_class_counts(splits[name])}); "
                "every split needs reviews of both classes"
            )
    used = sum(len(part) for part in splits.values())
    return splits, {"n_samples": used, "duplicates_dropped": duplicates, "train_dropped_as_in_eval": leaked,
                    "labels_dropped": dropped}  # fmt: skip


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
