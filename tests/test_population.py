"""Trials trained together (sentiment_lora.population, hydra/launcher=population): joint and right.

Joint: every frozen module of the shared encoder runs once per step, whatever the number of members. Right:
in fp32 with dropout off each member's epochs, selected epoch, test predictions and adapter equal its single
run's within 1e-5; a member that diverges, raises or is pruned
leaves the others' numbers unchanged; with dropout on, members draw independent masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sentiment_lora import population
from sentiment_lora.loop import TrainingDiverged
from sentiment_lora.population import memory, stacked
from sentiment_lora.run import train_seeds
from tests.conftest import compose_config, run_cli, write_reviews

EXACT = ["trainer.precision=fp32", "lora.dropout=0", "model.hidden_dropout=0", "model.attention_dropout=0",
         "model.head_dropout=0"]  # fmt: skip
MEMBERS = [
    ["lora/targets=qv"],
    ["lora/targets=all", "lora.rank=2", "trainer.seed=2", "optimizer.lr=3e-3"],
    ["lora/targets=ffn", "lora.rank=8", "trainer.seed=3", "trainer.grad_clip=1.0", "trainer.epochs=3"],
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A saved tiny encoder (so members of different seeds share one) and a toy CSV."""
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from sentiment_lora.sources import package_model_path

    root = tmp_path_factory.mktemp("population")
    write_reviews(root / "reviews.csv", n=120)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(root / "encoder")
    AutoTokenizer.from_pretrained(package_model_path()).save_pretrained(root / "encoder")
    return root


def base(workdir: Path) -> list[str]:
    return ["model=tiny", f"model.path={workdir / 'encoder'}", "data=csv", f"data.path={workdir / 'reviews.csv'}",
            "trainer.epochs=2", "trainer.batch_size=8", "trainer.max_length=32", "optimizer.lr=1e-2",
            "trainer.progress=false"]  # fmt: skip


def together(cfgs, dirs, hooks=None) -> list:
    """Members stacked, as on a GPU (a CPU trains them one after another unless told to stack)."""
    hooks = hooks or [None] * len(cfgs)
    jobs = [(cfg, d, hook) for cfg, d, hook in zip(cfgs, dirs, hooks, strict=True)]
    return population.train_together(jobs, stack=True)


def alone(cfg, run_dir: Path):
    run_dir.mkdir(parents=True)
    return train_seeds(cfg, run_dir)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_run(a: Path, b: Path, tol: float = 1e-5) -> None:
    first, second = record(a), record(b)
    assert first["status"] == second["status"] == "complete"
    assert first["val"]["epoch"] == second["val"]["epoch"]
    for one, two in zip(first["history"], second["history"], strict=True):
        assert one["train_loss"] == pytest.approx(two["train_loss"], abs=tol)
        assert one["val_loss"] == pytest.approx(two["val_loss"], abs=tol)
        assert one["val_accuracy"] == two["val_accuracy"]
    probs = [pd.read_csv(d / "test_predictions.csv")["prob"].to_numpy() for d in (a, b)]
    np.testing.assert_allclose(probs[0], probs[1], atol=tol)
    for name in ("adapter/adapter_model.safetensors", "head.safetensors"):
        if (a / name).exists():
            one, two = load_file(a / name), load_file(b / name)
            assert one.keys() == two.keys()
            for key in one:
                torch.testing.assert_close(one[key], two[key], atol=tol, rtol=0)


@pytest.mark.parametrize(
    "shared",
    [pytest.param([], id="every-layer-live"),
     pytest.param(["lora.top_layers=1", "trainer.frozen_prefix=cache"], id="cached-prefix")],
)  # fmt: skip
def test_members_equal_their_single_runs_in_fp32_without_dropout(workdir, tmp_path, shared):
    cfgs = [compose_config(base(workdir) + EXACT + shared + extra) for extra in MEMBERS]
    outcomes = together(cfgs, [tmp_path / f"member{i}" for i in range(len(cfgs))])
    singles = [alone(cfg, tmp_path / f"single{i}") for i, cfg in enumerate(cfgs)]
    assert outcomes == pytest.approx(singles)
    for index in range(len(cfgs)):
        assert_same_run(tmp_path / f"member{index}", tmp_path / f"single{index}")
    assert len(record(tmp_path / "member2")["history"]) == 3  # its own trainer.epochs, beside members with 2


def test_each_frozen_module_runs_once_per_step_for_the_whole_population(workdir, tmp_path, monkeypatch):
    calls: list[dict[str, int]] = []
    built = stacked.build_classifier

    def counted(*args, **kwargs):
        classifier = built(*args, **kwargs)
        counts: dict[str, int] = {}
        calls.append(counts)
        for name, module in classifier.named_modules():
            if name and isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding)):

                def hook(_module, _args, _output, name=name):
                    counts[name] = counts.get(name, 0) + 1

                module.register_forward_hook(hook)
        return classifier

    monkeypatch.setattr(stacked, "build_classifier", counted)
    for size in (2, 3):
        cfgs = [compose_config(base(workdir) + EXACT + extra + ["trainer.epochs=2"]) for extra in MEMBERS[:size]]
        dirs = [tmp_path / f"p{size}_{i}" for i in range(size)]
        assert all(isinstance(value, float) for value in together(cfgs, dirs))
    two, three = calls
    assert two and two == three  # the same calls with 3 members as with 2: once per step, not once per member
    layer_linear = [name for name in three if name.endswith("attention.self.query")]
    assert layer_linear and all(three[name] == three["encoder.embeddings.word_embeddings"] for name in layer_linear)
    # steps: 2 epochs x (train batches + validation batches) + test batches, each one call
    n_train, n_val, n_test = (record(tmp_path / "p3_0")["split_sizes"][k] for k in ("train", "val", "test"))
    eval_batch = compose_config(base(workdir)).trainer.eval_batch_size
    batches = 2 * (-(-n_train // 8) + -(-n_val // eval_batch)) + -(-n_test // eval_batch)
    assert three["encoder.embeddings.word_embeddings"] == batches


class RaisingHook:
    def __call__(self, epoch, val, entry=None):
        raise RuntimeError("a hook that fails")

    def stopped(self):
        raise AssertionError


class PruningHook:
    def __call__(self, epoch, val, entry=None):
        return True

    def stopped(self):
        import optuna

        return optuna.TrialPruned("pruned after epoch 1")


@pytest.mark.parametrize("how", ["diverges", "raises", "pruned"])
def test_a_member_that_fails_or_is_pruned_leaves_the_others_unchanged(workdir, tmp_path, how):
    others = [compose_config(base(workdir) + EXACT + extra) for extra in (MEMBERS[0], MEMBERS[2])]
    odd_extra = ["optimizer.lr=1e30"] if how == "diverges" else []
    odd = compose_config(base(workdir) + EXACT + MEMBERS[1] + odd_extra)
    hook = {"raises": RaisingHook(), "pruned": PruningHook()}.get(how)
    outcomes = together([others[0], odd, others[1]], [tmp_path / "a", tmp_path / "odd", tmp_path / "c"],
                        [None, hook, None])  # fmt: skip
    expected = {"diverges": TrainingDiverged, "raises": RuntimeError}.get(how)
    if expected is not None:
        assert isinstance(outcomes[1], expected)
        assert record(tmp_path / "odd")["status"] == "failed"
    else:
        assert type(outcomes[1]).__name__ == "TrialPruned"
        assert record(tmp_path / "odd")["status"] == "pruned" and "test" not in record(tmp_path / "odd")
    together(others, [tmp_path / "a2", tmp_path / "c2"])
    assert_same_run(tmp_path / "a", tmp_path / "a2")
    assert_same_run(tmp_path / "c", tmp_path / "c2")


def test_members_draw_independent_dropout_masks(workdir, tmp_path):
    """Two members of one config, dropout on: alone they would train identically; together their masks differ."""
    cfg = compose_config(base(workdir) + ["trainer.precision=fp32", "lora.dropout=0.5", "lora/targets=qv"])
    together([cfg, cfg], [tmp_path / "one", tmp_path / "two"])
    one, two = record(tmp_path / "one")["history"], record(tmp_path / "two")["history"]
    assert one[0]["train_loss"] != two[0]["train_loss"]


def test_trials_that_cannot_join_run_alone_and_say_why(workdir, tmp_path, caplog):
    cfgs = [compose_config(base(workdir) + ["method=linear_probe"]),
            compose_config(base(workdir) + ["lora/targets=qv"]),
            compose_config(base(workdir) + ["lora/targets=qv", "trainer.max_length=16"])]  # fmt: skip
    with caplog.at_level("INFO"):
        outcomes = together(cfgs, [tmp_path / f"t{i}" for i in range(3)])
    assert all(isinstance(value, float) for value in outcomes)
    assert "method=linear_probe: a population trains LoRA members only" in caplog.text
    assert "no other trial of this batch shares its" in caplog.text
    assert all(record(tmp_path / f"t{i}")["status"] == "complete" for i in range(3))


@pytest.mark.slow
def test_the_population_launcher_runs_a_sweep_with_one_key(workdir, tmp_path):
    args = [*base(workdir), "-m", "hydra/launcher=population", "hydra.launcher.stack=true", "lora.rank=2,4",
            "method=lora,linear_probe", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4 and all(json.loads(p.read_text())["status"] == "complete" for p in runs)
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "sweep").glob("*/train.log")}
    lora_runs = [name for name in logs if json.loads((tmp_path / "sweep" / name / "metrics.json").read_text())["method"]
                 == "lora"]  # fmt: skip
    assert len(lora_runs) == 2
    for name in lora_runs:
        assert "population of 2 trials" in logs[name] and "selected epoch" in logs[name]
        own = logs[name].count("selected epoch")
        assert own == 1  # its own lines, not the other member's
    predicted = run_cli(["--help"], cwd=tmp_path)  # the CLI still starts with the plugin registered
    assert predicted.returncode == 0


def test_on_a_cpu_trials_that_could_join_train_one_after_another_as_their_single_runs(
    workdir, tmp_path, monkeypatch, caplog
):
    # Stacking did not pay on a CPU (bench/README.md): by default the trials train one after another, each as its
    # single run does, over the one shared encoder; nothing of the stacked loop runs.
    from sentiment_lora.population import loop

    monkeypatch.setattr(loop, "Population", lambda *args: pytest.fail("members were stacked on a CPU"))
    # Dropout on: each trial's masks come from where its own set-up left torch's stream, as in its single run.
    cfgs = [compose_config(base(workdir) + ["trainer.precision=fp32"] + extra) for extra in MEMBERS[:2]]
    with caplog.at_level("INFO"):
        outcomes = population.train_together([(cfg, tmp_path / f"t{i}") for i, cfg in enumerate(cfgs)])
    assert all(isinstance(value, float) for value in outcomes)
    assert "2 trials that could join train one after another over one shared encoder: on a CPU" in caplog.text
    for i, cfg in enumerate(cfgs):
        single = alone(cfg, tmp_path / f"single{i}")
        assert record(tmp_path / f"t{i}")["test"]["loss"] == pytest.approx(
            record(tmp_path / f"single{i}")["test"]["loss"], abs=1e-6
        )
        assert outcomes[i] == pytest.approx(single, abs=1e-6)


def test_members_and_the_population_share_one_copy_of_the_frozen_encoder(workdir, tmp_path, monkeypatch):
    """The same storage, not equal copies: every frozen encoder tensor of every member and of the population's
    shared encoder is one tensor (data_ptr), in the compute dtype; the adapters stay each member's own."""
    from sentiment_lora.population import loop

    seen = {}
    real = loop.shared_encoder

    def recording(first, members, device):
        seen["members"], seen["result"] = members, real(first, members, device)
        return seen["result"]

    monkeypatch.setattr(loop, "shared_encoder", recording)
    cfgs = [compose_config(base(workdir) + ["trainer.precision=bf16", "trainer.epochs=1"] + extra) for extra in MEMBERS]
    together(cfgs, [tmp_path / f"m{i}" for i in range(len(cfgs))])
    classifiers, shared = seen["members"], seen["result"][0]
    pointers = [{name: t.data_ptr() for name, t in memory.frozen_tensors(c).items()} for c in classifiers]
    assert pointers[0] and all(other == pointers[0] for other in pointers[1:])
    query = "encoder.layer.0.attention.self.query.weight"
    assert shared.encoder.encoder.layer[0].attention.self.query.base.weight.data_ptr() == pointers[0][query]
    assert memory.frozen_tensors(classifiers[0])[query].dtype == torch.bfloat16
    lora = [{n: p.data_ptr() for n, p in c.named_parameters() if p.requires_grad} for c in classifiers]
    assert not set(lora[0].values()) & set(lora[1].values())


def test_split_to_fit_makes_near_equal_populations_within_the_budget():
    split_to_fit = memory.split_to_fit
    assert [len(part) for part in split_to_fit(list(range(5)), per_member=10, budget=25)] == [2, 2, 1]
    assert [len(part) for part in split_to_fit(list(range(7)), per_member=10, budget=30)] == [3, 2, 2]
    assert [len(part) for part in split_to_fit(list(range(3)), per_member=10, budget=5)] == [1, 1, 1]
    assert split_to_fit(list(range(4)), per_member=10, budget=1000) == [[0, 1, 2, 3]]


def test_a_memory_budget_splits_the_trials_into_populations_that_fit(workdir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(memory, "member_bytes", lambda run: 2**20)  # 1 MB a member: a budget of 2 MB holds 2
    cfgs = [compose_config(base(workdir) + ["trainer.epochs=1", "lora/targets=qv", f"lora.rank={rank}"])
            for rank in (2, 4, 8, 16)]  # fmt: skip
    with caplog.at_level("INFO"):
        outcomes = population.train_together([(cfg, tmp_path / f"t{i}") for i, cfg in enumerate(cfgs)],
                                             memory_budget_mb=2, stack=True)  # fmt: skip
    assert all(isinstance(value, float) for value in outcomes)
    assert (
        "population split: 4 trials into 2 populations of at most 2 (about 1 MB per member, budget 2 MB" in caplog.text
    )
    assert caplog.text.count("population of 2 trials") == 2
    assert all(record(tmp_path / f"t{i}")["status"] == "complete" for i in range(4))


def test_the_memory_estimate_counts_the_trained_layers_and_the_batch(workdir, tmp_path):
    from sentiment_lora.run import set_up

    def estimate(*extra) -> int:
        cfg = compose_config(base(workdir) + ["lora/targets=qv", *extra])
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        run_dir.mkdir()
        return memory.member_bytes(set_up(cfg, run_dir))

    every_layer = estimate()
    assert estimate("lora.top_layers=1") < every_layer < estimate("trainer.batch_size=16")
