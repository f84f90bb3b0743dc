"""How a data file's labels become 0/1: the default spellings, data.label_map's presets, and a map of one's own.

Hand-written because no library maps label spellings: scikit-learn's LabelEncoder numbers whatever it sees (a
star rating would become five classes), and `datasets`' ClassLabel names one dataset's classes, not a user's map.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from sentiment_lora.errors import UserError

# Without a map: 0/1, negative/positive, neg/pos (any case). True/False is refused there: a boolean column
# (is_spam, has_spoilers, ...) is more likely the wrong column; data.label_map=boolean says it is the label.
DEFAULT_LABELS = {"0": 0, "1": 1, "negative": 0, "positive": 1, "neg": 0, "pos": 1}
DEFAULT_SPELLINGS = "0/1, negative/positive, neg/pos"
# data.label_map=<name>. None drops the row (a 3-star review says neither).
PRESETS: dict[str, dict[object, int | None]] = {
    "stars": {1: 0, 2: 0, 3: None, 4: 1, 5: 1},
    "yes_no": {"no": 0, "yes": 1},
    "signed": {-1: 0, 1: 1},
    "boolean": {False: 0, True: 1},
}


def key_of(raw: object) -> str | None:
    """One spelling per label value, so a map's keys match however the file typed them: 'Yes' and 'yes', 1, 1.0
    and '1', True and 'true'. None for a missing value (an empty CSV field, a JSON null, NaN)."""
    if raw is None or (pd.api.types.is_scalar(raw) and pd.isna(raw)):
        return None
    if isinstance(raw, (bool, np.bool_)):
        return "true" if raw else "false"
    if isinstance(raw, (int, np.integer)):
        return str(int(raw))
    if isinstance(raw, (float, np.floating)):
        return str(int(raw)) if float(raw).is_integer() else repr(float(raw))
    text = str(raw).strip().lower()
    if not text:
        return None
    try:  # '1.0' and ' 1' in a text column are the label 1, as 1.0 in a number column is
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def resolve(label_map: object) -> dict[str, int | None] | None:
    """data.label_map as {label key: 0, 1 or None}, or None for the default spellings; a bad map is one UserError
    line naming the key."""
    if label_map is None:
        return None
    if isinstance(label_map, str):
        if label_map not in PRESETS:
            raise UserError(
                f"config data.label_map: unknown preset '{label_map}'; choose from {', '.join(PRESETS)}, or give a "
                "mapping such as {1: 0, 2: 0, 3: null, 4: 1, 5: 1}"
            )
        label_map = PRESETS[label_map]
    if not isinstance(label_map, Mapping) or not label_map:
        raise UserError(
            f"config data.label_map: {label_map!r} is neither a preset ({', '.join(PRESETS)}) nor a mapping of "
            "labels to 0, 1 or null"
        )
    resolved: dict[str, int | None] = {}
    for raw, value in label_map.items():
        if value not in (0, 1, None):
            raise UserError(f"config data.label_map: {raw!r} maps to {value!r}; map each label to 0, 1 or null")
        key = key_of(raw)
        if key is None:
            raise UserError(f"config data.label_map: {raw!r} is not a label value")
        if key in resolved and resolved[key] != value:
            raise UserError(f"config data.label_map: {raw!r} is mapped twice, to {resolved[key]} and {value}")
        resolved[key] = None if value is None else int(value)
    if not {0, 1} <= set(resolved.values()):
        raise UserError(f"config data.label_map: maps nothing to {'0' if 0 not in resolved.values() else '1'}")
    return resolved
