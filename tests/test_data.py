"""HTML stripping, CSV validation (one line naming file, column and row), sampling and the stratified split."""

from __future__ import annotations

import pandas as pd
import pytest

from sentiment_lora.data import balanced_sample, encode, fingerprint, read_labelled_csv, split, strip_html, truncate
from sentiment_lora.errors import UserError

from .conftest import write_reviews


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("Great film.<br /><br />Loved it", "Great film. Loved it"),
        ("<p>A <b>bold</b> &amp; <i>brave</i> movie</p>", "A bold & brave movie"),
        ("no markup   at\nall", "no markup at all"),
        ("5 < 6 but > 4", "5 < 6 but > 4"),
        ("<script>x</script>ok", "ok"),  # BeautifulSoup drops script bodies
    ],
)
def test_strip_html(raw, clean):
    assert strip_html(raw) == clean


def write(tmp_path, text: str, name: str = "bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("text,label\n", ["header only"]),
        ("", ["empty"]),
        ("review,label\nfine,1\n", ["no column 'text'", "review, label"]),
        ("text,sentiment\nfine,1\n", ["no column 'label'"]),
        ("text,label\ngood,1\nbad,2\n", ["column 'label'", "data row 2", "2"]),
        ("text,label\ngood,1\nbad,maybe\n", ["data row 2", "'maybe'"]),
        ("text,label\ngood,1\n,0\n", ["column 'text'", "data row 2", "empty text"]),
        ("text,label\ngood,1\n   ,0\n", ["data row 2", "empty text"]),
        ("text,label\ngood,\n", ["data row 1"]),
    ],
)
def test_bad_csv_is_one_line_naming_the_problem(tmp_path, content, fragments):
    path = write(tmp_path, content)
    with pytest.raises(UserError) as err:
        read_labelled_csv(path, "text", "label")
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_labelled_csv(tmp_path / "nope.csv", "text", "label")


def test_label_spellings_and_custom_columns(tmp_path):
    path = write(tmp_path, "body,y\na,positive\nb,NEG\nc,0\nd,1\ne,Pos\nf,negative\n")
    frame = read_labelled_csv(path, "body", "y")
    assert list(frame["label"]) == [1, 0, 0, 1, 1, 0]
    assert list(frame.columns) == ["text", "label"]


def test_balanced_sample_is_deterministic_and_balanced():
    frame = pd.DataFrame({"text": [f"r{i}" for i in range(300)], "label": [int(i % 3 == 0) for i in range(300)]})
    first, again = balanced_sample(frame, 100, seed=1), balanced_sample(frame, 100, seed=1)
    assert first.equals(again)
    assert first["label"].value_counts().to_dict() == {0: 50, 1: 50}
    assert not first.equals(balanced_sample(frame, 100, seed=2))


def test_balanced_sample_needs_enough_per_class():
    frame = pd.DataFrame({"text": list("abcdefghij"), "label": [0] * 9 + [1]})
    with pytest.raises(UserError, match="per class"):
        balanced_sample(frame, 6, seed=0)


def test_split_is_stratified_disjoint_and_deterministic(tmp_path):
    frame = read_labelled_csv(write_reviews(tmp_path / "r.csv", n=200, html=False), "text", "label")
    frame["text"] = [f"{t} #{i}" for i, t in enumerate(frame["text"])]  # unique texts to check disjointness
    parts = split(frame, 0.1, 0.1, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 160, "val": 20, "test": 20}
    for part in parts.values():
        assert part["label"].mean() == 0.5
    texts = [set(parts[name]["text"]) for name in ("train", "val", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert fingerprint(parts) == fingerprint(split(frame, 0.1, 0.1, seed=0))
    assert fingerprint(parts) != fingerprint(split(frame, 0.1, 0.1, seed=1))


@pytest.mark.parametrize(
    "truncation,expected",
    [("head", [0, 1, 2, 3, 4, 5]), ("tail", [4, 5, 6, 7, 8, 9]), ("head_tail", [0, 1, 6, 7, 8, 9])],
)
def test_truncation_keeps_the_configured_tokens(truncation, expected):
    assert truncate(list(range(10)), 6, truncation, head_fraction=0.3) == expected  # head_tail: round(0.3*6)=2
    assert truncate([1, 2], 6, truncation, head_fraction=0.3) == [1, 2]  # short reviews are left whole


def test_encode_wraps_truncated_tokens_in_the_models_special_tokens():
    from sentiment_lora.model import load_tokenizer
    from sentiment_lora.sources import package_model_path

    tokenizer = load_tokenizer(None, package_model_path())
    frame = pd.DataFrame({"text": ["first words " + "middle " * 50 + "last verdict great"], "label": [1]})
    rows = {cut: encode(frame, tokenizer, 12, truncation=cut)[0]["input_ids"] for cut in ("head", "tail", "head_tail")}
    words = {cut: tokenizer.convert_ids_to_tokens(ids) for cut, ids in rows.items()}
    assert all(len(ids) == 12 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in rows.values())  # fmt: skip
    assert words["head"][1:3] == ["first", "words"] and words["tail"][-4:-1] == ["last", "verdict", "great"]
    assert words["head_tail"][1:3] == ["first", "words"] and words["head_tail"][-4:-1] == ["last", "verdict", "great"]
    assert encode(frame, tokenizer, 12)[0]["input_ids"] == rows["head"]
