"""Data in from where researchers keep it (issue 20): TSV, semicolon CSV, JSONL and Parquet files, `datasets`
datasets (save_to_disk folders and the local cache), label maps, and imbalanced data kept as it is."""

from __future__ import annotations

import gzip
import json
import shutil
import sys

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from sklearn import metrics as skm

from sentiment_lora.analysis import summary as summary
from sentiment_lora.config import DataConfig, validate
from sentiment_lora.data.pipeline import file_format, fingerprint, load_data, read_labelled
from sentiment_lora.errors import UserError
from sentiment_lora.loop import fit
from sentiment_lora.metrics import classification_metrics, imbalance_warning, one_class_warning
from sentiment_lora.train import cli

from .conftest import TINY_FAST, compose_config, write_reviews


def reviews(tmp_path, n: int = 60) -> pd.DataFrame:
    return pd.read_csv(write_reviews(tmp_path / "reviews.csv", n=n))


def config(path=None, **overrides) -> DataConfig:
    overrides = {"name": "test", "source": "csv", **overrides}
    return DataConfig(path=None if path is None else str(path), **overrides)


# ---- files: TSV, semicolon CSV, JSONL, Parquet ----


def write_as(frame: pd.DataFrame, path, kind: str) -> None:
    if kind == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif kind == "semicolon":
        frame.to_csv(path, sep=";", index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize(
    "name,kind",
    [("r.tsv", "tsv"), ("r.tab", "tsv"), ("r.csv", "semicolon"), ("r.jsonl", "jsonl"), ("r.ndjson", "jsonl"),
     ("r.jsonl.gz", "jsonl"), ("r.tsv.bz2", "tsv"), ("r.parquet", "parquet"), ("r.pq", "parquet")],
)  # fmt: skip
def test_every_file_format_gives_the_splits_the_csv_gives(tmp_path, name, kind):
    frame = reviews(tmp_path)
    expected = fingerprint(load_data(config(tmp_path / "reviews.csv"))[0])
    write_as(frame, tmp_path / name, kind)
    splits, facts = load_data(config(tmp_path / name))
    assert fingerprint(splits) == expected
    assert facts["n_samples"] == 60


def test_compressed_parquet_is_read(tmp_path):
    reviews(tmp_path).to_parquet(tmp_path / "r.parquet", index=False)
    with open(tmp_path / "r.parquet", "rb") as plain, gzip.open(tmp_path / "r.parquet.gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    assert fingerprint(load_data(config(tmp_path / "r.parquet.gz"))[0]) == fingerprint(
        load_data(config(tmp_path / "reviews.csv"))[0]
    )


def test_format_by_extension_and_by_data_format(tmp_path):
    assert [file_format(tmp_path / name) for name in ("a.csv", "a.TSV", "a.jsonl.gz", "a.pq", "a.txt", "a")] == [
        "csv", "tsv", "jsonl", "parquet", "csv", "csv"]  # fmt: skip
    frame = reviews(tmp_path)
    write_as(frame, tmp_path / "export.txt", "jsonl")  # a name that says nothing: data.format does
    expected = fingerprint(load_data(config(tmp_path / "reviews.csv"))[0])
    assert fingerprint(load_data(config(tmp_path / "export.txt", format="jsonl"))[0]) == expected
    with pytest.raises(UserError, match="cannot be parsed as CSV|no column 'text'"):
        load_data(config(tmp_path / "export.txt"))


def test_an_explicit_delimiter_wins_over_the_sniffed_one(tmp_path):
    frame = reviews(tmp_path).assign(text=lambda f: f["text"].str.replace(" ", "|"))  # pipes in every text
    write_as(frame, tmp_path / "semi.csv", "semicolon")
    splits, _ = load_data(config(tmp_path / "semi.csv", delimiter=";"))
    assert "|" in splits["train"]["text"].iloc[0]
    with pytest.raises(UserError, match="no column 'text'"):
        load_data(config(tmp_path / "semi.csv", delimiter=","))


@pytest.mark.parametrize(
    "name,content,line",
    [
        ("bad.jsonl", '{"text": "great film", "label": 1}\n{"text": oops}\n', "cannot be parsed as JSONL"),
        ("missing.jsonl", '{"review": "great film", "label": 1}\n', "no column 'text' (columns: review, label)"),
        ("null.jsonl", '{"text": "great film", "label": 1}\n{"text": null, "label": 0}\n',
         "column 'text', data row 2: no text (null)"),
        ("nolabel.jsonl", '{"text": "great film", "label": 1}\n{"text": "awful"}\n',
         "column 'label', data row 2: no label (an empty value)"),
        ("empty.jsonl", "", "is empty (no rows)"),
        ("bad.parquet", "not parquet at all", "cannot be parsed as Parquet"),
        ("bools.jsonl", '{"text": "great film", "label": true}\n',
         "data row 1: label True is not one of 0/1, negative/positive, neg/pos (for true/false labels, set "
         "data.label_map=boolean)"),
    ],
)  # fmt: skip
def test_bad_jsonl_and_parquet_are_one_line_naming_file_column_and_row(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read_labelled(path, "text", "label")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"data file {path}: ")
    assert line in str(err.value)


def test_parquet_rows_are_named_by_their_row(tmp_path):
    frame = reviews(tmp_path, n=20)
    frame.loc[6, "label"] = 7
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    with pytest.raises(UserError, match="r.parquet: column 'label', data row 7: label 7 is not one of 0/1"):
        read_labelled(tmp_path / "r.parquet", "text", "label")


# ---- label maps ----


def stars(tmp_path, n: int = 60) -> pd.DataFrame:
    """Reviews with star ratings: 1-2 for negative texts, 4-5 for positive ones, and 3 for every fifth."""
    frame = reviews(tmp_path, n)
    frame["stars"] = [3 if index % 5 == 4 else (4 + index % 2 if label else 1 + index % 2)
                      for index, label in enumerate(frame["label"])]  # fmt: skip
    return frame


def test_the_stars_preset_maps_1_2_to_0_4_5_to_1_and_drops_3_counting_them(tmp_path):
    frame = stars(tmp_path)
    frame.to_csv(tmp_path / "stars.csv", index=False)
    splits, facts = load_data(config(tmp_path / "stars.csv", label_column="stars", label_map="stars"))
    kept = frame[frame["stars"] != 3]
    assert facts["labels_dropped"] == int((frame["stars"] == 3).sum()) == 12
    assert facts["n_samples"] == len(kept)
    used = pd.concat(splits.values())
    assert dict(zip(used["text"], used["label"], strict=True)) == dict(
        zip(kept["text"].str.replace(r"<[^>]+>", " ", regex=True).str.split().str.join(" "), kept["label"],
            strict=True)
    )  # fmt: skip


def test_a_mapping_of_ones_own_matches_any_case_and_number_spelling(tmp_path):
    frame = reviews(tmp_path)
    frame["verdict"] = ["Yes" if label else "NO" for label in frame["label"]]
    frame.loc[3, "verdict"] = "maybe"
    frame.to_json(tmp_path / "v.jsonl", orient="records", lines=True)
    splits, facts = load_data(config(tmp_path / "v.jsonl", label_column="verdict",
                                     label_map={"yes": 1, "no": 0, "maybe": None}))  # fmt: skip
    assert facts["labels_dropped"] == 1
    used = pd.concat(splits.values()).set_index("text")["label"]
    plain = pd.concat(load_data(config(tmp_path / "reviews.csv"))[0].values()).set_index("text")["label"]
    assert len(used) == 59 and used.equals(plain.reindex(used.index))


@pytest.mark.parametrize(
    "label_map,values",
    [("signed", [-1, 1]), ("boolean", [False, True]), ("yes_no", ["no", "YES"]), ({-1: 0, 1: 1}, ["-1", "1.0"]),
     ({"bad": 0, True: 1}, ["Bad", "true"])],
)  # fmt: skip
def test_label_presets(tmp_path, label_map, values):
    frame = reviews(tmp_path)
    frame["label"] = [values[label] for label in frame["label"]]
    frame.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    splits, _ = load_data(config(tmp_path / "r.jsonl", label_map=label_map))
    assert fingerprint(splits) == fingerprint(load_data(config(tmp_path / "reviews.csv"))[0])


def test_a_label_the_map_lacks_names_the_value_and_its_row(tmp_path):
    frame = stars(tmp_path)
    frame.loc[9, "stars"] = 6
    frame.to_csv(tmp_path / "stars.csv", index=False)
    with pytest.raises(UserError) as err:
        load_data(config(tmp_path / "stars.csv", label_column="stars", label_map="stars"))
    assert str(err.value) == (
        f"data file {tmp_path / 'stars.csv'}: column 'stars', data row 10: label 6 is not in data.label_map (which "
        "maps 1, 2, 3, 4, 5)"
    )


@pytest.mark.parametrize(
    "override,line",
    [
        ("data.label_map=starz", "config data.label_map: unknown preset 'starz'; choose from stars, yes_no, signed, "
                                 "boolean, or give a mapping such as {1: 0, 2: 0, 3: null, 4: 1, 5: 1}"),
        ("data.label_map={1: 0, 2: 2}", "config data.label_map: 2 maps to 2; map each label to 0, 1 or null"),
        ("data.label_map={1: 1, 2: null}", "config data.label_map: maps nothing to 0"),
        ("data.delimiter=';;'", "config data.delimiter: must be one character"),
        ("data.config_name=plain_text", "config data.config_name: is read by data=hf only"),
    ],
)  # fmt: skip
def test_bad_label_maps_and_keys_are_one_line(override, line):
    cfg = compose_config(["data=csv", "data.path=r.csv", override])
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert str(err.value).startswith(line)


# ---- datasets: save_to_disk folders and the local cache ----


def as_dataset(frame: pd.DataFrame) -> datasets.Dataset:
    return datasets.Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)


def three_splits(tmp_path) -> dict[str, pd.DataFrame]:
    frame = reviews(tmp_path, n=60)
    parts = {"train": frame.iloc[:40], "validation": frame.iloc[40:50], "test": frame.iloc[50:]}
    for name, part in parts.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    return parts


def test_a_save_to_disk_dataset_dict_gives_its_own_splits_as_the_split_files_do(tmp_path):
    parts = three_splits(tmp_path)
    folder = tmp_path / "saved"
    datasets.DatasetDict({name: as_dataset(part) for name, part in parts.items()}).save_to_disk(folder)
    splits, facts = load_data(config(folder, source="hf"))
    files = load_data(config(train_path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "validation.csv"),
                             test_path=str(tmp_path / "test.csv")))  # fmt: skip
    assert fingerprint(splits) == fingerprint(files[0])
    assert facts == files[1]
    assert [len(splits[name]) for name in ("train", "val", "test")] == [40, 10, 10]


def test_a_save_to_disk_dataset_of_one_split_is_split_as_one_file_is(tmp_path):
    frame = reviews(tmp_path)
    as_dataset(frame).save_to_disk(tmp_path / "one")
    assert fingerprint(load_data(config(tmp_path / "one", source="hf"))[0]) == fingerprint(
        load_data(config(tmp_path / "reviews.csv"))[0]
    )


def test_named_splits_class_labels_and_label_maps_from_a_dataset(tmp_path):
    frame = stars(tmp_path)
    frame["stars"] -= 1  # 0-4, as a ClassLabel of five star ratings numbers them
    features = datasets.Features({"text": datasets.Value("string"),
                                  "stars": datasets.ClassLabel(names=[f"{i} stars" for i in range(1, 6)]),
                                  "label": datasets.Value("int64")})  # fmt: skip
    whole = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
    parts = {"fit": range(40), "dev": range(40, 50), "final": range(50, 60), "unlabelled": range(5)}
    saved = datasets.DatasetDict({name: whole.select(rows) for name, rows in parts.items()})
    saved.save_to_disk(tmp_path / "stars")
    cfg = config(tmp_path / "stars", source="hf", train_split="fit", test_split="final", label_column="stars",
                 label_map={0: 0, 1: 0, 2: None, 3: 1, 4: 1})  # fmt: skip
    splits, facts = load_data(cfg)  # "dev" is found as the validation split
    assert facts["labels_dropped"] == 12
    assert [len(splits[name]) for name in ("train", "val", "test")] == [32, 8, 8]


@pytest.mark.parametrize(
    "overrides,line",
    [
        ({"test_split": "exam"}, "saved: no split 'exam' (data.test_split); it holds train, validation, test"),
        ({"text_column": "review"}, "split 'train': no column 'review' (columns: text, label); set "
                                    "data.text_column/label_column"),
        ({"n_samples": 30}, "config data.n_samples: is not used with the dataset's own splits"),
        ({"val_split": "test"}, "name one split twice"),
    ],
)  # fmt: skip
def test_dataset_mistakes_are_one_line(tmp_path, overrides, line):
    parts = three_splits(tmp_path)
    folder = tmp_path / "saved"
    datasets.DatasetDict({name: as_dataset(part) for name, part in parts.items()}).save_to_disk(folder)
    with pytest.raises(UserError) as err:
        load_data(config(folder, source="hf", **overrides))
    message = str(err.value)
    assert "\n" not in message
    for fragment in line.split(" ... "):
        assert fragment in message


def test_a_dataset_without_a_validation_split_draws_one_from_train(tmp_path):
    parts = three_splits(tmp_path)
    folder = tmp_path / "imdb_like"  # as IMDB on the hub: train, test and unsupervised (unlabelled)
    saved = {"train": as_dataset(pd.concat([parts["train"], parts["validation"]])), "test": as_dataset(parts["test"]),
             "unsupervised": as_dataset(parts["test"].assign(label=-1))}  # fmt: skip
    datasets.DatasetDict(saved).save_to_disk(folder)
    splits, facts = load_data(config(folder, source="hf", val_fraction=0.2))
    assert [len(splits[name]) for name in ("train", "val", "test")] == [40, 10, 10]
    assert splits["val"]["label"].mean() == 0.5  # stratified: the train split's shares
    assert fingerprint(splits) == fingerprint(load_data(config(folder, source="hf", val_fraction=0.2))[0])
    assert fingerprint(splits) != fingerprint(load_data(config(folder, source="hf", val_fraction=0.2, seed=1))[0])
    assert not set(splits["val"]["text"]) & set(splits["train"]["text"])


def test_a_folder_that_is_not_a_saved_dataset_is_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match=r"dataset folder .*plain: not a `datasets` save_to_disk folder"):
        load_data(config(tmp_path / "plain", source="hf"))
    with pytest.raises(UserError, match=r"dataset folder .*nowhere: not found"):
        load_data(config(tmp_path / "nowhere", source="hf"))


@pytest.fixture
def offline(monkeypatch):
    """The hub unreachable, as HF_HUB_OFFLINE=1 makes it: only the local cache is read."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def cache_dataset(tmp_path, frame: pd.DataFrame, repo_id: str, cache) -> None:
    """`repo_id` in a `datasets` cache as load_dataset leaves a hub dataset there
    (<namespace>___<name>/<config>/<version>/<hash>/), prepared by datasets' own JSON builder."""
    from datasets.packaged_modules.json.json import Json

    rows = tmp_path / "rows.jsonl"
    frame.to_json(rows, orient="records", lines=True)
    name = repo_id.split("/")[1]
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name=name, config_name="default",
                   data_files={"train": str(rows)}, hash="0123abcd")  # fmt: skip
    builder.download_and_prepare()
    prepared = next((tmp_path / "build" / name).glob("default*/*/0123abcd"))
    shutil.copytree(prepared, cache / repo_id.replace("/", "___") / "default" / prepared.parent.name / "0123abcd")


def test_a_dataset_by_name_is_read_from_the_local_cache_offline(tmp_path, offline):
    frame = reviews(tmp_path)
    cache = tmp_path / "hf_cache"
    cache_dataset(tmp_path, frame, "someone/reviews", cache)
    splits, _ = load_data(config(source="hf", name="someone/reviews", cache_dir=str(cache)))
    assert fingerprint(splits) == fingerprint(load_data(config(tmp_path / "reviews.csv"))[0])
    with pytest.raises(UserError) as err:
        load_data(config(source="hf", name="someone/reviews", config_name="other", cache_dir=str(cache)))
    assert str(err.value).startswith("dataset someone/reviews (config other): cannot be loaded (ValueError: ")
    with pytest.raises(UserError) as err:
        load_data(config(source="hf", name="nobody/nothing", cache_dir=str(cache)))
    assert "\n" not in str(err.value) and str(err.value).startswith("dataset nobody/nothing: cannot be loaded (")
    assert str(err.value).endswith("with HF_HUB_OFFLINE=1 only the local Hugging Face cache is read "
                                   "(HF_DATASETS_CACHE, or data.cache_dir)")  # fmt: skip


def test_data_hf_needs_a_name():
    cfg = compose_config(["data=hf", "data.path=/some/folder"])
    with pytest.raises(UserError, match="config data.name: is required for data=hf"):
        validate(cfg)


# ---- imbalanced data: kept as it is, and reported honestly ----


def imbalanced(tmp_path, n: int = 400, positive_share: float = 0.9):
    frame = reviews(tmp_path, n=n)
    negatives = frame[frame["label"] == 0]
    keep = negatives.sample(n=round(n / 2 * (1 - positive_share) / positive_share), random_state=0)
    frame = pd.concat([frame[frame["label"] == 1], keep]).sample(frac=1.0, random_state=0)
    frame.to_csv(tmp_path / "imbalanced.csv", index=False)
    return frame, tmp_path / "imbalanced.csv"


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_samples": 150}, {"n_val": 20, "n_test": 30}, {"n_val": 20, "n_test": 30, "n_train": 40}],
    ids=["fractions", "n_samples", "pool", "pool_n_train"],
)
def test_a_users_imbalanced_file_is_not_rebalanced(tmp_path, overrides):
    frame, path = imbalanced(tmp_path)
    share = frame["label"].mean()
    splits, _ = load_data(config(path, **overrides))
    for name, part in splits.items():
        assert abs(part["label"].mean() - share) < 0.06, (name, part["label"].mean(), share)
    if "n_test" in overrides:  # asked for, half of each class
        balanced = load_data(config(path, balance=True, n_val=10, n_test=10))[0]
        assert balanced["test"]["label"].mean() == balanced["val"]["label"].mean() == 0.5


def test_the_imdb_preset_still_balances_its_draws():
    cfg = compose_config(["data=imdb"])
    assert cfg.data.balance is True
    assert compose_config(["data=csv", "data.path=r.csv"]).data.balance is False


def test_imbalance_metrics_are_scikit_learns_and_name_the_smaller_class():
    labels = np.array([1] * 16 + [0] * 4, dtype=np.float32)
    probs = np.array([0.9] * 14 + [0.2] * 2 + [0.1, 0.8, 0.7, 0.6], dtype=np.float32)
    found = classification_metrics(labels, probs, loss=0.3)
    predictions = (probs >= 0.5).astype(int)
    assert found["majority_accuracy"] == 0.8
    assert found["minority_class"] == 0
    assert found["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predictions))
    assert found["f1_minority"] == pytest.approx(skm.f1_score(labels, predictions, pos_label=0))
    assert found["f1_minority"] != pytest.approx(found["f1"])
    line = imbalance_warning("test", found)
    assert line.startswith("test set: 80% of its 20 reviews are positive, so always predicting positive scores "
                           "accuracy 0.8000; accuracy is a weak guide here")  # fmt: skip
    balanced = classification_metrics(np.array([0, 1] * 5, dtype=np.float32), np.full(10, 0.6), loss=0.5)
    assert balanced["majority_accuracy"] == 0.5 and imbalance_warning("test", balanced) is None


def test_a_model_that_predicts_one_class_for_every_review_is_named_in_a_warning():
    labels = np.array([0, 1] * 5, dtype=np.float32)
    below = np.linspace(0.1, 0.45, 10)  # ranks the reviews (AUC defined) but never crosses 0.5
    line = one_class_warning("test", below, classification_metrics(labels, below, loss=0.7))
    assert line.startswith("test set: the model predicts negative for all 10 reviews (accuracy 0.5000")
    above = below + 0.5
    assert "predicts positive for all 10" in one_class_warning(
        "test", above, classification_metrics(labels, above, 0.7)
    )
    mixed = np.array([0.2, 0.8] * 5)
    assert one_class_warning("test", mixed, classification_metrics(labels, mixed, loss=0.3)) is None
    one_label = np.ones(10, dtype=np.float32)
    assert one_class_warning("test", above, classification_metrics(one_label, above, loss=0.3)) is None


def test_a_minority_of_positives_is_the_positive_class():
    labels = np.array([0] * 7 + [1] * 3, dtype=np.float32)
    found = classification_metrics(labels, np.array([0.1] * 7 + [0.9, 0.9, 0.1]), loss=0.2)
    assert found["minority_class"] == 1 and found["f1_minority"] == pytest.approx(found["f1"])
    assert imbalance_warning("test", found).startswith("test set: 70% of its 10 reviews are negative")


# ---- trainer.select_on ----


class Constant(torch.nn.Module):
    """A one-parameter "classifier": the epoch loop needs something to train; the scripted validation decides."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, prefix=None):
        return self.bias.expand(len(input_ids))


# Each epoch's validation metrics, scripted so that each selection metric prefers another epoch.
SCRIPTED = [
    {"accuracy": 0.80, "balanced_accuracy": 0.50, "f1_minority": 0.10, "loss": 0.40},
    {"accuracy": 0.70, "balanced_accuracy": 0.75, "f1_minority": 0.30, "loss": 0.50},
    {"accuracy": 0.75, "balanced_accuracy": 0.60, "f1_minority": 0.60, "loss": 0.45},
    {"accuracy": 0.60, "balanced_accuracy": 0.55, "f1_minority": 0.20, "loss": 0.30},
]


@pytest.mark.parametrize(
    "select_on,epoch", [("val_acc", 1), ("val_balanced_acc", 2), ("val_f1_minority", 3), ("val_loss", 4)]
)
def test_select_on_chooses_the_epoch_kept_and_is_recorded(select_on, epoch):
    model = Constant()
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([0.0, 1.0])}  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = OmegaConf.create({"epochs": 4, "progress": False, "grad_clip": None, "select_on": select_on})
    script = iter(SCRIPTED)
    fitted = fit(model, [batch], lambda: dict(next(script)), optimizer, scheduler, trainer, torch.device("cpu"), None)
    assert fitted.best["epoch"] == epoch
    assert fitted.record()["selected_on"] == select_on
    assert [entry["val_balanced_accuracy"] for entry in fitted.history] == [m["balanced_accuracy"] for m in SCRIPTED]


def test_an_imbalanced_run_records_its_reference_scores_selection_and_warning(monkeypatch, tmp_path):
    frame, path = imbalanced(tmp_path, n=240, positive_share=0.8)
    args = [*TINY_FAST, "trainer.precision=fp32", "data=csv", f"data.path={path.name}", "data.n_val=30",
            "data.n_test=40", "trainer.select_on=val_balanced_acc", "hydra.run.dir=run"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *args])
    cli()  # the real entry point, in this process (a run that completes returns)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test_labels = pd.read_csv(tmp_path / "run" / "test_predictions.csv")["label"]
    assert record["test"]["majority_accuracy"] == pytest.approx(max(test_labels.mean(), 1 - test_labels.mean()))
    assert record["test"]["majority_accuracy"] >= 0.7 and 0 <= record["test"]["balanced_accuracy"] <= 1
    assert record["warnings"] and record["warnings"][0].startswith("test set: 80% of its 40 reviews are positive")
    assert record["selected_on"] == "val_balanced_acc"
    best = max(record["history"], key=lambda entry: (entry["val_balanced_accuracy"], -entry["val_loss"]))
    assert record["val"]["epoch"] == best["epoch"]
    row = summary.row_of(tmp_path / "run")
    assert row["test_majority"] == record["test"]["majority_accuracy"]
    assert "test_bal_acc" in summary.to_markdown(pd.DataFrame([{**row, "pareto": False}]))
