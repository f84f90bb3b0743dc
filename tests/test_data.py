"""HTML stripping, CSV validation (one line naming file, column and row), sampling and the stratified split."""

from __future__ import annotations

import pandas as pd
import pytest

from sentiment_lora.config import DataConfig
from sentiment_lora.data.pipeline import (
    balanced_sample,
    encode,
    fingerprint,
    load_data,
    read_labelled,
    split,
    strip_html,
    truncate,
)
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
        ("text,label\ngood,True\nbad,False\n", ["column 'label'", "data row 1", "label True is not one of"]),
    ],
)
def test_bad_csv_is_one_line_naming_the_problem(tmp_path, content, fragments):
    path = write(tmp_path, content)
    with pytest.raises(UserError) as err:
        read_labelled(path, "text", "label")[0]
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_labelled(tmp_path / "nope.csv", "text", "label")[0]


def test_a_directory_is_not_reported_missing(tmp_path):
    with pytest.raises(UserError, match=f"data file {tmp_path}: is a directory, not a CSV file"):
        read_labelled(tmp_path, "text", "label")[0]


def test_texts_that_read_like_missing_values_are_texts(tmp_path):
    path = write(tmp_path, "text,label\nNone,1\nNA,0\nnull,1\nn/a,0\n")
    assert list(read_labelled(path, "text", "label")[0]["text"]) == ["None", "NA", "null", "n/a"]


def csv_config(path, **overrides) -> DataConfig:
    return DataConfig(name="csv", source="csv", path=str(path), **overrides)


def test_duplicates_are_dropped_before_sampling_and_splitting(tmp_path):
    lines = write_reviews(tmp_path / "once.csv", n=40).read_text().splitlines()
    twice = write(tmp_path, "\n".join([*lines, *lines[1:]]) + "\n", "twice.csv")
    splits, facts = load_data(csv_config(twice))
    assert facts == {"n_samples": 40, "duplicates_dropped": 40, "train_dropped_as_in_eval": 0, "labels_dropped": 0}
    texts = [set(splits[name]["text"]) for name in ("train", "val", "test")]
    assert sum(len(part) for part in texts) == 40
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert fingerprint(splits) == fingerprint(load_data(csv_config(tmp_path / "once.csv"))[0])
    # n_samples counts distinct reviews.
    assert load_data(csv_config(twice, n_samples=30))[1] == {
        "n_samples": 30,
        "duplicates_dropped": 40,
        "train_dropped_as_in_eval": 0,
        "labels_dropped": 0,
    }


def test_reviews_that_differ_only_in_markup_or_spacing_are_one_review(tmp_path):
    rows = "".join(f"review number {i},{i % 2}\n" for i in range(20))
    path = write(tmp_path, f'text,label\n<p>great  film</p>,1\n{rows}great film,1\n"great\nfilm ",1\n')
    assert load_data(csv_config(path))[1] == {
        "n_samples": 21,
        "duplicates_dropped": 2,
        "train_dropped_as_in_eval": 0,
        "labels_dropped": 0,
    }
    assert load_data(csv_config(path, strip_html=False))[1]["duplicates_dropped"] == 1  # markup counts then


def test_one_review_with_opposite_labels_names_both_data_rows(tmp_path):
    rows = "".join(f"review number {i},{i % 2}\n" for i in range(20))
    path = write(tmp_path, f"text,label\n{rows}Great film!,positive\n<b>Great</b> film!,neg\n")
    with pytest.raises(UserError) as err:
        load_data(csv_config(path))
    assert str(err.value) == (
        f"data file {path}: data rows 21 and 22 hold the same review with opposite labels (1 and 0); "
        "correct or remove one"
    )


@pytest.mark.parametrize("n_samples", [None, 20])
def test_a_review_of_markup_alone_names_the_file_and_its_data_row(tmp_path, n_samples):
    rows = "".join(f"review number {i},{i % 2}\n" for i in range(40))
    path = write(tmp_path, f"text,label\n{rows}<br /><br />,1\n")
    with pytest.raises(UserError) as err:
        load_data(csv_config(path, n_samples=n_samples))
    assert str(err.value) == f"data file {path}: column 'text', data row 41: no text left once HTML is stripped"


def test_n_samples_above_the_data_records_what_was_used(tmp_path):
    path = write_reviews(tmp_path / "r.csv", n=40)
    assert load_data(csv_config(path, n_samples=1000))[1] == {
        "n_samples": 40,
        "duplicates_dropped": 0,
        "train_dropped_as_in_eval": 0,
        "labels_dropped": 0,
    }
    assert load_data(csv_config(path, n_samples=21, balance=True))[1]["n_samples"] == 20  # half per class
    assert load_data(csv_config(path, n_samples=21))[1]["n_samples"] == 21  # the file's class shares


@pytest.mark.parametrize("rows", [6, 8, 10, 12, 19])
def test_too_few_reviews_per_class_for_the_split_is_one_exact_line(tmp_path, rows):
    path = write_reviews(tmp_path / "small.csv", n=rows)
    with pytest.raises(UserError) as err:
        load_data(csv_config(path))
    negative, positive = (rows + 1) // 2, rows // 2
    assert str(err.value) == (
        f"data file {path}: a review of each class in every split takes 10 distinct reviews per class at "
        f"val_fraction=0.1, test_fraction=0.1; there are {negative} negative and {positive} positive"
    )


@pytest.mark.parametrize(
    "val,test,per_class,more",
    [(0.1, 0.1, 10, 0), (0.1, 0.1, 10, 37), (0.3, 0.3, 4, 0), (0.04, 0.28, 25, 0), (0.45, 0.45, 10, 3)],
)
def test_the_minimum_per_class_gives_every_split_both_classes(val, test, per_class, more):
    frame = pd.DataFrame({"text": [f"r{i}" for i in range(2 * per_class + more)]})
    frame["label"] = [int(i < per_class) for i in range(len(frame))]
    for seed in range(5):
        for part in split(frame, val, test, seed=seed).values():
            assert set(part["label"]) == {0, 1}
    with pytest.raises(UserError, match=f"takes {per_class} distinct reviews per class"):
        split(frame.iloc[1:], val, test, seed=0)


def test_label_spellings_and_custom_columns(tmp_path):
    path = write(tmp_path, "body,y\na,positive\nb,NEG\nc,0\nd,1\ne,Pos\nf,negative\n")
    frame = read_labelled(path, "body", "y")[0]
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
    frame = read_labelled(write_reviews(tmp_path / "r.csv", n=200, html=False), "text", "label")[0]
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
    from transformers import AutoTokenizer

    from sentiment_lora.sources import package_model_path

    tokenizer = AutoTokenizer.from_pretrained(package_model_path())
    frame = pd.DataFrame({"text": ["first words " + "middle " * 50 + "last verdict great"], "label": [1]})
    rows = {cut: encode(frame, tokenizer, 12, truncation=cut)[0]["input_ids"] for cut in ("head", "tail", "head_tail")}
    words = {cut: tokenizer.convert_ids_to_tokens(ids) for cut, ids in rows.items()}
    assert all(len(ids) == 12 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in rows.values())  # fmt: skip
    assert words["head"][1:3] == ["first", "words"] and words["tail"][-4:-1] == ["last", "verdict", "great"]
    assert words["head_tail"][1:3] == ["first", "words"] and words["head_tail"][-4:-1] == ["last", "verdict", "great"]
    assert encode(frame, tokenizer, 12)[0]["input_ids"] == rows["head"]


def test_evaluation_sets_from_the_pool_stay_the_same_when_the_training_sample_grows(tmp_path):
    path = write_reviews(tmp_path / "pool.csv", n=200)
    small = load_data(csv_config(path, n_train=20, n_val=30, n_test=40))
    large = load_data(csv_config(path, n_train=100, n_val=30, n_test=40))
    assert [len(small[0][name]) for name in ("train", "val", "test")] == [20, 30, 40]
    assert fingerprint(small[0], ("val", "test")) == fingerprint(large[0], ("val", "test"))
    assert fingerprint(small[0]) != fingerprint(large[0])
    texts = {name: set(small[0][name]["text"]) for name in ("train", "val", "test")}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["val"])


def test_a_split_column_and_three_files_give_the_same_splits(tmp_path):
    reviews = pd.read_csv(write_reviews(tmp_path / "all.csv", n=60))
    reviews["part"] = ["train"] * 40 + ["dev"] * 10 + ["test"] * 10
    reviews.to_csv(tmp_path / "with_split.csv", index=False)
    by_column = load_data(csv_config(tmp_path / "with_split.csv", split_column="part"))[0]
    for name, rows in (("train", slice(0, 40)), ("val", slice(40, 50)), ("test", slice(50, 60))):
        reviews.iloc[rows][["text", "label"]].to_csv(tmp_path / f"{name}.csv", index=False)
    files = {f"{name}_path": str(tmp_path / f"{name}.csv") for name in ("train", "val", "test")}
    by_files = load_data(csv_config(None, **files))[0]
    assert fingerprint(by_column) == fingerprint(by_files)
    assert [len(by_files[name]) for name in ("train", "val", "test")] == [40, 10, 10]


def test_given_splits_drop_training_copies_of_evaluation_reviews(tmp_path):
    reviews = pd.read_csv(write_reviews(tmp_path / "all.csv", n=40, html=False))
    reviews["split"] = ["train"] * 20 + ["val"] * 10 + ["test"] * 10
    leaked = reviews.iloc[[30, 35]].assign(split="train")  # two test reviews also in the training split
    pd.concat([reviews, leaked]).to_csv(tmp_path / "leaky.csv", index=False)
    splits, facts = load_data(csv_config(tmp_path / "leaky.csv", split_column="split"))
    assert facts["train_dropped_as_in_eval"] == 2 and len(splits["train"]) == 20
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.n_val=100"], "data.n_val/n_test: set both"),
        (["data.n_val=10", "data.n_test=10", "data.n_samples=100"], "data.n_samples: is not used"),
        (["data.train_path=a.csv"], "give all three files"),
        # Keys the chosen layout does not read: refused, not recorded in metrics.json as if used.
        (
            ["data.train_path=a.csv", "data.val_path=b.csv", "data.test_path=c.csv"],
            "config data.path: is not read when data.train_path/val_path/test_path give the splits: set data.path=null",
        ),
        (["data.split_column=split", "data.n_samples=100"], "config data.n_samples: is not used with given splits"),
        (["data.n_train=100"], "config data.n_train: is used only with data.n_val/n_test"),
    ],
)
def test_split_layouts_that_contradict_each_other_are_one_line(overrides, message):
    from sentiment_lora.config import validate

    from .conftest import compose_config

    with pytest.raises(UserError, match=message):
        validate(compose_config(["data=csv", "data.path=x.csv", "data.n_val=null", "data.n_test=null", *overrides]))


def test_a_bad_split_name_names_the_file_column_and_row(tmp_path):
    reviews = pd.read_csv(write_reviews(tmp_path / "all.csv", n=6))
    reviews["split"] = ["train", "train", "holdout", "val", "test", "test"]
    reviews.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"bad.csv, column 'split': data row 3: split 'holdout'"):
        load_data(csv_config(tmp_path / "bad.csv", split_column="split"))


# IMDB's own markup is stripped as before; a tag-like word that names no HTML element is the reviewer's text.
@pytest.mark.parametrize(
    "raw,clean",
    [
        ("It was <terrible> and boring", "It was <terrible> and boring"),
        ("I <3 this film", "I <3 this film"),
        ("a < b > c", "a < b > c"),
        ("The ending is ridiculous <SPOILER>, as he", "The ending is ridiculous <SPOILER>, as he"),  # IMDB's own
        ("give it an extra star <grin>)", "give it an extra star <grin>)"),  # IMDB's own
        ("meet such a man??? <<<sigh>>> Sophie", "meet such a man??? <<<sigh>>> Sophie"),  # IMDB's own
        ("well spent. <http://example.com/x?y=1>", "well spent."),  # an address, as an href, goes (IMDB's own)
        ("mail <mailto:a@example.com> me", "mail me"),
        ("</terrible> end", "</terrible> end"),
        ("One.<br /><br />Two.<br/>Three<BR>four", "One. Two. Three four"),
        ("an abbey of <i>very</i> long-lived <b>monks</b>", "an abbey of very long-lived monks"),
        ("Verhoeven's<em>Basic instinct</em>, <hr>It's", "Verhoeven's Basic instinct , It's"),
        ("Tom &amp; Jerry, it&#39;s &quot;fine&quot; &lt;ok&gt;", 'Tom & Jerry, it\'s "fine" <ok>'),
        ('see <a href="http://example.com/review?id=1&amp;p=2">this review</a> now', "see this review now"),
        ("<p>home.<p><br /><br />There</p>", "home. There"),
        ("<center><font color=red>Red</font></center>", "Red"),  # obsolete elements are still markup
    ],
)
def test_strip_html_strips_real_markup_only(raw, clean):
    assert strip_html(raw) == clean


INVISIBLE = ["\u200b", "\u200b\u200d\ufeff", "\u200e\u202e", "\u2060 \u00a0", "\u3164", "\u2800\u200c"]


@pytest.mark.parametrize("text", INVISIBLE, ids=[f"U+{ord(t[0]):04X}" for t in INVISIBLE])
def test_a_review_of_invisible_characters_alone_is_an_empty_review_naming_its_row(tmp_path, text):
    path = tmp_path / "invisible.csv"
    pd.DataFrame({"text": ["good film", text, "bad film"], "label": [1, 0, 0]}).to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        read_labelled(path, "text", "label")[0]
    message = str(err.value)
    assert message.startswith(f"data file {path}: column 'text', data row 2: no visible text, only invisible ")
    assert f"U+{ord(text[0]):04X}" in message and "\n" not in message


def test_invisible_characters_around_visible_text_are_kept_and_markup_around_them_alone_is_empty(tmp_path):
    rows = "".join(f"review number {i},{i % 2}\n" for i in range(40))
    kept = write(tmp_path, f"text,label\n{rows}\u200bfine\u200e,1\n", "kept.csv")
    splits = load_data(csv_config(kept))[0]
    assert "\u200bfine\u200e" in set().union(*(part["text"] for part in splits.values()))
    wrapped = write(tmp_path, f"text,label\n{rows}<p>\u200b</p><br />,1\n", "wrapped.csv")
    with pytest.raises(UserError) as err:
        load_data(csv_config(wrapped))
    assert str(err.value) == (
        f"data file {wrapped}: column 'text', data row 41: once HTML is stripped, no visible text, only invisible "
        "characters (U+200B); remove the row or fix its text"
    )


@pytest.mark.parametrize("values", [["1", "2", "3", "4"], ["4.5", " 7", "-1", "1e3"]])
def test_a_text_column_of_numbers_alone_is_the_wrong_column(tmp_path, values):
    path = tmp_path / "numbers.csv"
    pd.DataFrame({"id": values, "label": [0, 1, 0, 1], "review": ["a", "b", "c", "d"]}).to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        read_labelled(path, "id", "label")[0]
    assert str(err.value) == (
        f"data file {path}: column 'id' holds only numbers (data row 1: {values[0]!r}), not review texts; "
        "set data.text_column/label_column"
    )
    # A number among words is a review like any other ("10/10", "7").
    path.write_text("text,label\n10,1\ngreat film,1\n7,0\n")
    assert list(read_labelled(path, "text", "label")[0]["text"]) == ["10", "great film", "7"]


@pytest.mark.parametrize("name", ["dup.csv", "dup.csv.gz", "dup.csv.bz2"])
def test_a_repeated_column_name_is_refused_naming_it(tmp_path, name):
    # The two label columns contradict each other: pandas would read them as label and label.1 and use the first.
    path = tmp_path / name
    frame = pd.DataFrame([["good", 1, 0], ["bad", 0, 1]], columns=["text", "label", "label"])
    frame.to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        read_labelled(path, "text", "label")[0]
    assert str(err.value) == (
        f"data file {path}: column 'label' appears 2 times in the header (columns 2, 3); rename or remove all but one"
    )
    # A repeated column that is not read changes nothing.
    pd.DataFrame([["good", 1, "x", "y"]], columns=["text", "label", "note", "note"]).to_csv(path, index=False)
    assert list(read_labelled(path, "text", "label")[0]["label"]) == [1]


def given_files(tmp_path, labels: dict[str, list[int]]) -> dict[str, str]:
    paths = {}
    for name, split_labels in labels.items():
        texts = [f"{name} review {i} {'great' if label else 'awful'}" for i, label in enumerate(split_labels)]
        pd.DataFrame({"text": texts, "label": split_labels}).to_csv(tmp_path / f"{name}.csv", index=False)
        paths[f"{name}_path"] = str(tmp_path / f"{name}.csv")
    return paths


BOTH = [0, 1] * 5


@pytest.mark.parametrize("one_class", ["train", "val", "test"])
def test_given_split_files_with_one_class_in_a_split_are_refused_naming_the_file(tmp_path, one_class):
    labels = {"train": BOTH * 2, "val": BOTH, "test": BOTH, one_class: [1] * 8}
    with pytest.raises(UserError) as err:
        load_data(csv_config(None, **given_files(tmp_path, labels)))
    assert str(err.value) == (
        f"data file {tmp_path / f'{one_class}.csv'}: the {one_class} split holds one class (0 negative and 8 "
        "positive); every split needs reviews of both classes"
    )


def test_a_split_column_with_one_class_in_a_split_is_refused_naming_the_column(tmp_path):
    path = tmp_path / "with_split.csv"
    labels = BOTH * 2 + [0] * 6 + BOTH
    split_names = ["train"] * 20 + ["val"] * 6 + ["test"] * 10
    texts = [f"review {i}" for i in range(len(labels))]
    pd.DataFrame({"text": texts, "label": labels, "split": split_names}).to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        load_data(csv_config(path, split_column="split"))
    assert str(err.value) == (
        f"data file {path}, column 'split': the val split holds one class (6 negative and 0 positive); every split "
        "needs reviews of both classes"
    )


def test_a_training_split_left_with_one_class_once_evaluation_copies_are_dropped_is_refused(tmp_path):
    paths = given_files(tmp_path, {"train": [1] * 6, "val": BOTH, "test": BOTH})
    # The training split's only negative review is a copy of a validation review: dropped, one class remains.
    train = pd.read_csv(paths["train_path"])
    val = pd.read_csv(paths["val_path"])
    pd.concat([train, val.iloc[[0]]]).to_csv(paths["train_path"], index=False)
    with pytest.raises(UserError, match=r"train.csv: the train split holds one class \(0 negative and 6 positive\)"):
        load_data(csv_config(None, **paths))
