"""Every option of every config group composes against the schema; bad values are one-line errors."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from sentiment_lora.config import TARGETS, validate
from sentiment_lora.errors import UserError

from .conftest import CONF, compose_config


def options(group: str):
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


GROUP_OPTIONS = [
    (group, option)
    for group in ("model", "lora", "lora/targets", "optimizer", "data", "trainer")
    for option in options(group)
]


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert groups == {"model", "lora", "lora/targets", "optimizer", "data", "trainer"}
    assert len(GROUP_OPTIONS) >= 18


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_each_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "csv":
        overrides.append("data.path=reviews.csv")
    cfg = compose_config(overrides)
    validate(cfg)
    assert set(cfg.lora.targets) <= set(TARGETS)
    for target in cfg.lora.targets:
        assert target == "head" or cfg.model.targets_map[target]


def test_defaults_are_the_seed_lora_setting_on_the_offline_default():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.data.name, cfg.optimizer.name) == ("minilm", "imdb", "adamw")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, list(cfg.lora.targets)) == (4, 16, 0.05, ["q", "v"])
    assert (cfg.data.n_samples, cfg.data.val_fraction, cfg.data.test_fraction) == (2000, 0.1, 0.1)


def test_target_preset_and_list_override():
    assert list(compose_config(["lora/targets=qkv"]).lora.targets) == ["q", "k", "v"]
    assert list(compose_config(["lora.targets=[k,ffn]"]).lora.targets) == ["k", "ffn"]


@pytest.mark.parametrize("override", ["lora.rnk=8", "trainer.epoch=2", "model.pooling_mode=mean"])
def test_typo_in_key_is_rejected_by_the_schema(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override])
    assert override.split("=")[0].split(".")[-1] in str(err.value.__cause__)


def test_wrong_type_is_rejected_by_the_schema():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["lora.rank=eight"])
    assert isinstance(err.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    "override,key",
    [
        ("lora.rank=0", "lora.rank"),
        ("lora.targets=[q,x]", "lora.targets"),
        ("lora.targets=[]", "lora.targets"),
        ("lora.targets=[q,q]", "lora.targets"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("optimizer.name=lion", "optimizer.name"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("model.pooling=max", "model.pooling"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("data.val_fraction=0.95", "data.val_fraction"),
    ],
)
def test_semantic_errors_name_the_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(UserError) as err:
        validate(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_csv_data_needs_a_path():
    with pytest.raises(UserError, match="data.path"):
        validate(compose_config(["data=csv"]))


def compose_with_hydra(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset", options("hparams_search"))
def test_every_sweep_preset_composes(preset):
    cfg = compose_with_hydra([f"hparams_search={preset}"])
    validate(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("LoraOptunaSweeper")
    assert sweeper.storage.startswith("sqlite:///outputs/optuna/") and sweeper.study_name in sweeper.storage
    directions = [sweeper.direction] if isinstance(sweeper.direction, str) else list(sweeper.direction)
    assert len(directions) == len(cfg.objectives)
    assert cfg.hydra.sweep.subdir == "trial_None"  # trial_<number> once the sweeper sets trial.number
    for key in sweeper.params:
        assert key.replace("/", ".").split(".")[0] in ("lora", "optimizer", "trainer", "model")


@pytest.mark.parametrize("pruner", ["median", "sha", "threshold"])
def test_pruner_group(pruner):
    cfg = compose_with_hydra(["hparams_search=lora_optuna", f"hydra/sweeper/pruner={pruner}"])
    assert cfg.hydra.sweeper.pruner._target_.startswith("optuna.pruners.")


@pytest.mark.parametrize("launcher", ["slurm", "joblib"])
def test_launchers_compose(launcher):
    cfg = compose_with_hydra(["hparams_search=lora_optuna", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")
