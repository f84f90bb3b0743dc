"""Input that used to run to "complete" on garbage (issue 16, "success on garbage"), through the real command line:
one `error:` line naming the key, file, column or row, exit status 2, nothing written."""

from __future__ import annotations

import pandas as pd
import pytest

from .conftest import TINY_FAST, write_reviews
from .test_cli import run_in_process

SCHEMA = "unknown key (not in the schema, sentiment_lora/config.py)"


def given_splits(tmp_path, val_labels: list[int]) -> list[str]:
    reviews = pd.read_csv(write_reviews(tmp_path / "all.csv", n=60))
    parts = {"train": reviews.iloc[:40], "val": reviews.iloc[40:50].assign(label=val_labels), "test": reviews.iloc[50:]}
    for name, part in parts.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    return [f"data.{name}_path={name}.csv" for name in parts]


def write_csvs(tmp_path) -> None:
    rows = pd.read_csv(write_reviews(tmp_path / "reviews.csv", n=40))
    contradicting = rows.assign(second=1 - rows["label"])[["text", "label", "second"]]
    contradicting.columns = ["text", "label", "label"]
    contradicting.to_csv(tmp_path / "two_labels.csv.gz", index=False)
    rows.assign(text=["\u200b\u200e"] + list(rows["text"][1:])).to_csv(tmp_path / "invisible.csv", index=False)
    rows.assign(id=range(len(rows))).to_csv(tmp_path / "with_id.csv", index=False)
    stars = rows.assign(label=[[1, 5][label] for label in rows["label"]]).astype({"label": object})
    stars.loc[2, "label"] = "five"
    stars.to_json(tmp_path / "stars.jsonl", orient="records", lines=True)


CSV = ["data=csv", "data.path=reviews.csv"]


@pytest.mark.parametrize(
    "args,line",
    [
        (["+lora.rnk=8"], f"config lora.rnk: {SCHEMA}; did you mean lora.rank?"),
        (["lora.rnk=8"], f"config lora.rnk: {SCHEMA}; did you mean lora.rank?"),
        (["data=csv", "data.path=reviews.csv", "data.train_path=train.csv",
          "data.val_path=val.csv", "data.test_path=test.csv"],
         "config data.path: is not read when data.train_path/val_path/test_path give the splits: set data.path=null"),
        (["data=csv", "data.train_path=train.csv", "data.val_path=one_class_val", "data.test_path=test.csv"],
         "data file val.csv: the val split holds one class (0 negative and 10 positive); every split needs "
         "reviews of both classes"),
        (["data=csv", "data.path=two_labels.csv.gz"], "data file two_labels.csv.gz: column 'label' appears 2 times in "
                                                      "the header (columns 2, 3); rename or remove all but one"),
        (["data=csv", "data.path=invisible.csv"], "data file invisible.csv: column 'text', data row 1: no visible "
                                                  "text, only invisible characters (U+200B, U+200E); remove the row "
                                                  "or fix its text"),
        (["data=csv", "data.path=with_id.csv", "data.text_column=id"],
         "data file with_id.csv: column 'id' holds only numbers (data row 1: '0'), not review texts; set "
         "data.text_column/label_column"),
        (["data=csv", "data.path=reviews.csv", "data.label_map=starz"],
         "config data.label_map: unknown preset 'starz'; choose from stars, yes_no, signed, boolean, or give a "
         "mapping such as {1: 0, 2: 0, 3: null, 4: 1, 5: 1}"),
        (["data=hf", "data.path=reviews.csv"],
         "config data.name: is required for data=hf: a dataset id (data.name=stanfordnlp/imdb), or with "
         "data.path=<a save_to_disk folder> the name to record it under"),
        (["data=hf", "data.path=nowhere", "data.name=mine"], "dataset folder nowhere: not found"),
        (["data=csv", "data.path=stars.jsonl", "data.label_map=stars"],
         "data file stars.jsonl: column 'label', data row 3: label 'five' is not in data.label_map (which maps 1, 2, "
         "3, 4, 5)"),
    ],
    ids=["added_key", "misspelt_key", "path_and_split_files", "one_class_val", "repeated_column", "invisible_review",
         "numbers_column", "unknown_label_preset", "hf_without_name", "hf_folder_missing", "unmapped_label"],
)  # fmt: skip
def test_garbage_is_one_line_exit_2_and_nothing_written(monkeypatch, capsys, tmp_path, args, line):
    write_csvs(tmp_path)
    given_splits(tmp_path, val_labels=[1] * 10)
    args = [arg.replace("one_class_val", "val.csv") for arg in args]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, [*TINY_FAST, *args])
    assert code == 2 and err.splitlines() == [f"error: {line}"], err
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a refused run left a directory behind"


def test_an_unknown_key_touches_no_file_of_an_existing_run_directory(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "done"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the completed run's own config\n")
    code, err = run_in_process(monkeypatch, capsys, tmp_path, [*TINY_FAST, "+lora.rnk=8", f"hydra.run.dir={run_dir}"])
    assert code == 2 and err.startswith("error: config lora.rnk: ")
    assert [path.name for path in run_dir.rglob("*")] == [".hydra", "config.yaml"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "the completed run's own config\n"
