"""export --format sentence-transformers and --format onnx on tiny fp32 runs: docs/export.md's lines load each
folder and score as `predict` does (1e-5) for reviews that fit max_length; a long review shows what head+tail
truncation becomes in an export. And the model card's Hub metadata, read back with huggingface_hub."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from sentiment_lora import predict as predict_lib
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.export import card as card_lib
from sentiment_lora.export import cli as export_lib
from sentiment_lora.export.formats import FORMATS
from sentiment_lora.loop import predict
from sentiment_lora.rundir.completed import load_model, open_run

from .conftest import compose_config
from .test_predict_export import call, docs_blocks, train_run

# Both fp32. mean_head_tail: the default recipe's truncation. cls_head: cls pooling, LoRA on the head too (merged
# into the exported head), head truncation.
RUNS = {
    "mean_head_tail": ["trainer.precision=fp32", "data.truncation=head_tail"],
    "cls_head": ["trainer.precision=fp32", "model.pooling=cls", "lora/targets=all"],
}
SHORT = ["A wonderful, moving film.", "awful boring movie", "the plot was fine, the cast weak"]
# Longer than max_length (32): its head is all negative words, its tail all positive ones.
LONG = " ".join(["awful boring terrible film"] * 10 + ["wonderful superb loved it"] * 10)
SNIPPET_TEXTS = 'texts = ["A wonderful, moving film.", "Dull, and far too long."]'


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {name: train_run(root, name, extra) for name, extra in RUNS.items()}


def documented_probabilities(export_format: str, texts: list[str], where, monkeypatch) -> np.ndarray:
    """docs/export.md's block for the format, run as it stands with its texts replaced, in the folder holding
    `exported`."""
    snippet = FORMATS[export_format].snippet
    assert snippet in docs_blocks() and not re.search(r"(import|from) sentiment_lora", snippet)
    assert snippet.count(SNIPPET_TEXTS) == 1
    monkeypatch.chdir(where)
    namespace: dict = {}
    exec(compile(snippet.replace(SNIPPET_TEXTS, f"texts = {texts!r}"), "docs/export.md", "exec"), namespace)
    return np.asarray(namespace["probabilities"], dtype=np.float64)


@pytest.mark.parametrize(
    "export_format,run_name",
    [("sentence-transformers", "mean_head_tail"), ("onnx", "mean_head_tail"), ("sentence-transformers", "cls_head"),
     ("onnx", "cls_head")],
)  # fmt: skip
def test_each_format_loads_in_its_documented_lines_and_scores_as_predict(
    runs, tmp_path, capsys, monkeypatch, export_format, run_name
):
    for module in FORMATS[export_format].needs:  # the `export` extra (CI installs it)
        pytest.importorskip(module)
    run_dir = runs[run_name]
    folder = tmp_path / "exported"
    code, stdout, err = call(export_lib.main, [run_dir, folder, "--format", export_format], capsys)
    assert code == 0, err
    assert stdout.strip().endswith(f"({export_format})")
    spec = json.loads((folder / "classifier.json").read_text())
    assert (spec["export_format"], spec["written_by"]) == (export_format, export_lib.WRITTEN_BY)
    assert export_lib.is_export(folder)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "a temporary folder was left"
    if export_format == "onnx":
        assert {path.name for path in folder.iterdir()} >= {"model.onnx", "tokenizer.json", "README.md"}
        assert not (folder / "model.safetensors").exists()  # the weights are in the graph
    else:
        modules = json.loads((folder / "modules.json").read_text())
        assert [module["path"] for module in modules] == ["", "1_Pooling", "2_Dense"]
        dense = json.loads((folder / "2_Dense" / "config.json").read_text())
        assert (dense["out_features"], dense["activation_function"]) == (1, "torch.nn.modules.activation.Sigmoid")

    run = open_run(run_dir)
    trained = load_model(run)
    max_length = run.cfg.trainer.max_length
    assert len(trained.tokenizer(LONG)["input_ids"]) > max_length
    assert all(len(trained.tokenizer(text)["input_ids"]) <= max_length for text in SHORT)
    texts = [*SHORT, LONG]
    exported = documented_probabilities(export_format, texts, tmp_path, monkeypatch)
    assert exported.shape == (len(texts),)

    # What `predict` gives on the run (fp32: the run's precision; its own truncation), for reviews that fit.
    predicted = predict_lib.score(run, pd.DataFrame({"text": texts}), None, torch.device("cpu"))
    np.testing.assert_allclose(exported[:-1], predicted[:-1], rtol=0, atol=1e-5)
    # The export sees what its tokenizer's truncation gives, the head, for every review: the long one included.
    head_rows = data_lib.encode(pd.DataFrame({"text": texts, "label": 0}), trained.tokenizer, max_length)
    head_probs = predict(trained.model, head_rows, trained.tokenizer, 8, torch.device("cpu"), None)
    np.testing.assert_allclose(exported, head_probs, rtol=0, atol=1e-5)
    if run.cfg.data.truncation == "head_tail":  # predict keeps head and tail of the long review: another number
        assert abs(exported[-1] - predicted[-1]) > 1e-4, (exported[-1], predicted[-1])
    else:
        assert abs(exported[-1] - predicted[-1]) <= 1e-5


def test_a_format_whose_library_is_missing_is_one_line_and_writes_nothing(runs, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    code, _, err = call(export_lib.main, [runs["cls_head"], tmp_path / "out", "--format", "onnx"], capsys)
    assert code == 2 and err.strip() == (
        "error: --format onnx: needs the onnxruntime package, which is not installed; "
        "pip install 'sentiment-lora[export]'"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_model_card_carries_hub_metadata_that_huggingface_hub_reads_back(runs, tmp_path, capsys):
    from huggingface_hub import ModelCard

    run_dir = runs["cls_head"]
    folder = tmp_path / "tiny_sentiment"
    code, _, err = call(export_lib.main, [run_dir, folder], capsys)  # the default format: transformers
    assert code == 0, err
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert {"sentiment-lora", "peft", "lora", "text-classification", "transformers"} <= set(data.tags)
    assert data.base_model is None and data.datasets is None  # random init, and a CSV without a Hub id
    defined = [name for name in ("accuracy", "f1", "precision", "recall", "roc_auc") if test.get(name) is not None]
    assert data.metrics == defined and "accuracy" in defined
    assert data.model_name == "tiny_sentiment"
    results = {result.metric_type: result for result in data.eval_results}
    assert sorted(results) == sorted(defined)
    accuracy = results["accuracy"]
    assert accuracy.metric_value == pytest.approx(test["accuracy"], abs=1e-6)
    assert accuracy.metric_name == f"test accuracy ({test['n']} reviews)"
    assert (accuracy.task_type, accuracy.dataset_split) == ("text-classification", "test")
    assert (accuracy.dataset_type, accuracy.dataset_name) == ("csv", "cls_head.csv")
    # The human text stays below the metadata.
    assert card.text.lstrip().startswith("# tiny + LoRA sentiment classifier")
    assert f"| accuracy | {test['accuracy']:.4f} | [" in card.text and 'folder = "tiny_sentiment"' in card.text

    # A MiniLM run on IMDB (its config; the tiny run's record): base model and dataset are Hub ids.
    cfg = compose_config(["model=minilm", "data=imdb"])
    minilm = dataclasses.replace(open_run(run_dir), cfg=cfg)
    text = card_lib.model_card(minilm, "minilm_onnx", 1e-7, False, FORMATS["onnx"])
    (tmp_path / "card.md").write_text(text)
    data = ModelCard.load(tmp_path / "card.md").data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and data.datasets == ["stanfordnlp/imdb"]
    assert data.library_name == "onnx" and "onnx" in data.tags
    assert {result.dataset_type for result in data.eval_results} == {"stanfordnlp/imdb"}
    assert "## Files" in text and "model.onnx" in text


@pytest.mark.parametrize(
    "data_overrides,expected",
    [(["data=hf", "data.name=rotten_tomatoes"], ["rotten_tomatoes"]),  # by name: a Hub dataset id
     (["data=hf", "data.name=mine", "data.path=/data/saved"], None)],  # a save_to_disk folder names no Hub dataset
)  # fmt: skip
def test_the_card_names_a_hub_dataset_only_for_data_hf_by_name(runs, data_overrides, expected):
    run = dataclasses.replace(open_run(runs["cls_head"]), cfg=compose_config(["model=tiny", *data_overrides]))
    assert card_lib.card_data(run, FORMATS["transformers"], "tiny").datasets == expected
