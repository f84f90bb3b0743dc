"""The method registry (sentiment_lora/methods/): lookups, the rule that nothing outside methods/ names a method, and
a toy method registered from this file alone (no other edit to the package, no YAML in conf/) that trains, resumes,
predicts, exports and summarizes as a built-in one does (docs/adding-a-method.md walks through the same toy)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from sentiment_lora import methods
from sentiment_lora import predict as predict_lib
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.export import cli as export_lib
from sentiment_lora.methods.base import Method, MethodConfig, nearest_size
from sentiment_lora.run import train
from sentiment_lora.schema import AT_LEAST_ONE, described
from sentiment_lora.train import cli
from sentiment_lora.trained import load_trained

from .conftest import REPO, TINY_FAST, compose_config, write_reviews
from .test_predict_export import call
from .test_resume import Killed, kill_after_epoch, results_of
from .test_summarize import summarize_here

TOY = "toy_top_norm"


@dataclass
class TopNormConfig(MethodConfig):
    top: int = described("How many of the top encoder layers train their LayerNorms.", 1, within=AT_LEAST_ONE)


def layer_norm_parameters(layers) -> list:
    return [p for layer in layers for m in layer.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]


class TopNorm(Method):
    """The toy: the LayerNorms of the top `method.top` encoder layers and the head train; nothing else."""

    name = TOY
    title = "top LayerNorms"
    trains = "the LayerNorms of the top encoder layers and the head"
    schema = TopNormConfig
    groups = ("layernorm",)
    default_lr = 1e-2

    def attach(self, classifier, cfg, total_steps=None):
        top = list(classifier.layers())[-cfg.method.top :]
        chosen = {
            id(p) for layer in top for m in layer.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
        }
        for parameter in classifier.encoder.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        for parameter in classifier.head.parameters():
            parameter.requires_grad_(True)
        return classifier

    def group_of(self, name: str) -> str | None:
        return "layernorm" if name.startswith("encoder.") else None


@pytest.fixture(scope="module")
def toy():
    """Registered for this module's tests only: other test files list the built-in methods."""
    methods.register(TopNorm)
    yield methods.get(TOY)
    methods.unregister(TOY)


def _cli_run(root, name: str, extra: list[str]):
    """A run through the real command line in this process (the in-test registration is visible), with .hydra/
    and run.yaml as a user's run has them."""
    reviews = write_reviews(root / "reviews.csv", n=80)
    args = [*TINY_FAST, "trainer.precision=fp32", "trainer.eval_batch_size=3", "data=csv", f"data.path={reviews}",
            f"method={TOY}", *extra]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["sentiment_lora.train", *args, f"hydra.run.dir={root / name}"])
        cli()
    return root / name


@pytest.fixture(scope="module")
def toy_run(toy, tmp_path_factory):
    return _cli_run(tmp_path_factory.mktemp("toy"), "run", ["trainer.epochs=1", "method.top=2"])


def test_get_names_the_choices_of_an_unknown_method():
    with pytest.raises(UserError) as raised:
        methods.get("nope")
    message = str(raised.value)
    assert message.startswith("config method.name: unknown value 'nope'; choose from ")
    assert all(name in message for name in methods.names()) and methods.names()[0] == methods.DEFAULT


@pytest.mark.parametrize("budget,expected", [(5_006, 1), (10_005, 1), (15_005, 1), (15_006, 2), (24_990, 2),
                                             (639_990, 64)])  # fmt: skip
def test_nearest_size_picks_the_knob_whose_count_is_nearest(budget, expected):
    # A count linear in the knob, as LoRA's rank: 10,000 per unit plus 5; ties go to the smaller knob.
    assert nearest_size(lambda rank: 10_000 * rank + 5, budget, 1, 64, "method.budget") == expected


@pytest.mark.parametrize("budget,line", [(4_000, "too small: the smallest size, 1, trains 10,005"),
                                         (700_000, "too large: the largest size, 64, trains 640,005")])  # fmt: skip
def test_nearest_size_refuses_a_budget_outside_the_knobs_range(budget, line):
    with pytest.raises(UserError, match=f"config method.budget: {budget:,} is {line}"):
        nearest_size(lambda rank: 10_000 * rank + 5, budget, 1, 64, "method.budget")


def _string_literals(path):
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING:
            try:
                yield token.start[0], ast.literal_eval(token.string)
            except (ValueError, SyntaxError):  # an f-string: its pieces are not whole names
                continue


def test_no_module_outside_methods_names_a_method():
    sources = [
        path
        for folder in ("sentiment_lora", "hydra_plugins", "scripts", "bench")
        for path in (REPO / folder).rglob("*.py")
    ]
    sources = [path for path in sources if (REPO / "sentiment_lora" / "methods") not in path.parents]
    assert len(sources) > 20
    named = [
        f"{path.relative_to(REPO)}:{line}: {value!r}"
        for path in sources
        for line, value in _string_literals(path)
        if value in methods.names()
    ]
    assert named == []


def test_the_registry_is_read_without_importing_torch():
    # summarize, curve and ranking read the registry; they start without torch, peft or transformers.
    code = "import sys, sentiment_lora.methods as m; m.names(); print(sorted({'torch', 'peft'} & set(sys.modules)))"
    # -I: without PYTHONPATH, which under SENTIMENT_LORA_TEST_AUTO_BF16 brings a sitecustomize that imports torch.
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_registered_method_composes_with_its_own_keys_checked_by_hydra(toy):
    cfg = compose_config([*TINY_FAST, f"method={TOY}", "method.top=2"])
    assert (cfg.method.name, cfg.method.top, cfg.method.lr) == (TOY, 2, 1e-2)
    with pytest.raises(Exception, match="method.tpo"):
        compose_config([*TINY_FAST, f"method={TOY}", "method.tpo=2"])


def test_a_misspelt_key_of_the_method_is_one_line_on_the_command_line(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *TINY_FAST, f"method={TOY}", "method.tpo=2"])
    with pytest.raises(SystemExit) as exited:
        cli()
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.strip().splitlines() == [
        "error: config method.tpo: unknown key (not in the schema, sentiment_lora/config.py); did you mean method.top?"
    ]
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *TINY_FAST, f"method={TOY}", "method.top=0"])
    with pytest.raises(SystemExit):
        cli()
    assert "config method.top: must be >= 1" in capsys.readouterr().err


def test_the_toy_trains_and_records_exact_counts_by_group(toy_run):
    metrics = json.loads((toy_run / "metrics.json").read_text())
    cfg = OmegaConf.load(toy_run / ".hydra" / "config.yaml")
    classifier = load_trained(cfg.model, toy_run, TOY).model
    layers = list(classifier.layers())[-2:]
    norms = sum(
        p.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
    )
    hidden = classifier.encoder.config.hidden_size
    assert metrics["status"] == "complete" and metrics["method"] == TOY
    assert metrics["params"]["by_group"] == {"layernorm": norms, "head": hidden + 1, "encoder": 0}
    assert norms == 2 * 2 * 2 * hidden  # two layers, two LayerNorms each (attention output, FFN), weight and bias
    assert metrics[TOY] == {"top": 2} and metrics["lora"] is None
    assert metrics["optimizer"]["lr"] == 1e-2  # the method's default lr
    # Saved: the tensors it trained, by name, beside the random init; they moved away from the init.
    trained, init = load_file(toy_run / "encoder_trained.safetensors"), load_file(toy_run / "encoder.safetensors")
    assert sum(value.numel() for value in trained.values()) == norms
    assert all(not torch.equal(value, init[name]) for name, value in trained.items())
    assert all(torch.equal(classifier.encoder.state_dict()[name], value) for name, value in trained.items())


def test_the_toy_resumes_after_an_interrupt_to_the_uninterrupted_result(toy, tmp_path, monkeypatch):
    reviews = write_reviews(tmp_path / "reviews.csv", n=80)
    cfg = compose_config([*TINY_FAST, "trainer.epochs=2", "trainer.precision=fp32", "data=csv",
                          f"data.path={reviews}", f"method={TOY}"])  # fmt: skip
    (tmp_path / "whole").mkdir(), (tmp_path / "killed").mkdir()
    train(cfg, tmp_path / "whole")
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=1)
        with pytest.raises(Killed):
            train(cfg, tmp_path / "killed")
    train(cfg, tmp_path / "killed")
    whole, resumed = results_of(tmp_path / "whole"), results_of(tmp_path / "killed")
    assert resumed[:3] == whole[:3]
    pd.testing.assert_frame_equal(resumed[3], whole[3])


def test_predict_reproduces_the_toy_runs_test_predictions(toy_run, tmp_path, capsys):
    cfg = OmegaConf.load(toy_run / ".hydra" / "config.yaml")
    test_csv = tmp_path / "test.csv"
    data_lib.load_splits(cfg.data)["test"].to_csv(test_csv, index=False)
    out = tmp_path / "scored.csv"
    code, _, err = call(predict_lib.main, [toy_run, "--csv", test_csv, "--out", out], capsys)
    assert code == 0, err
    saved, scored = pd.read_csv(toy_run / "test_predictions.csv", dtype=str), pd.read_csv(out, dtype=str)
    for column in ("row", "prob", "prediction"):
        assert scored[column].tolist() == saved[column].tolist(), column


def test_the_toy_exports_and_its_card_names_it(toy_run, tmp_path, capsys):
    folder = tmp_path / "exported"
    code, _, err = call(export_lib.main, [toy_run, folder], capsys)
    assert code == 0, err  # export checks the folder's probabilities against the run's model itself
    card = ModelCard.load(folder / "README.md").text.lstrip()
    assert card.startswith("# tiny + top LayerNorms sentiment classifier")
    assert f"trained {TopNorm.trains}" in card
    assert json.loads((folder / "classifier.json").read_text())["method"] == TOY
    code, _, err = call(export_lib.main, [toy_run, tmp_path / "with_adapter", "--adapter"], capsys)
    assert code == 2 and f"method={TOY}, which has no adapter" in err


def test_the_toy_summarizes_beside_the_default_method(toy_run, tmp_path, capsys):
    code, out, err = summarize_here(capsys, toy_run.parent)
    assert code == 0, err
    assert TOY in out
