"""One training run, top to bottom: setup -> data -> model -> fit -> test -> record.

Every configuration and every sweep trial runs `train`. It returns what `cfg.objectives` names (the selected
epoch's validation accuracy by default), the value a sweeper optimizes. Side concerns live elsewhere: where
weights and data come from (sources.py), the per-process memo (memo.py), the frozen-prefix modes (prefix.py),
the epoch loop (loop.py), the record (rundir/record.py), the sweep's pruning hook (trial.py), the loggers (tracking.py).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict

from sentiment_lora import fastpath, methods, peak_memory, prefix, tracking
from sentiment_lora.choose_model import choice_line
from sentiment_lora.config import validate
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.loop import EpochHook, Fitted, evaluate, fit
from sentiment_lora.methods.base import method_lr
from sentiment_lora.metrics import imbalance_warning, one_class_warning
from sentiment_lora.model import build_classifier, load_tokenizer, plain_state
from sentiment_lora.rundir import claim as immutable
from sentiment_lora.rundir import record as results
from sentiment_lora.rundir.checkpoint import Checkpoint
from sentiment_lora.runtime import make_scheduler, pick_device, pick_dtype, precision_name, precision_reason
from sentiment_lora.sources import resolve_weights
from sentiment_lora.trained import count_params, save_trained

log = logging.getLogger(__name__)


@tracking.tracked  # logger=tensorboard|mlflow|many: config, epochs, final metrics, status (tracking.py)
def train(cfg, run_dir: Path, on_epoch: EpochHook | None = None) -> float | tuple[float, ...]:
    validate(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.dry_run:
        return dry_run(cfg, run_dir)
    memory_since = peak_memory.reset()  # before set_up: the data and the model count towards the run's peak
    run = set_up(cfg, run_dir)
    run.memory_since = memory_since
    return finish(run, fit_alone(run, on_epoch), on_epoch)


def fit_alone(run: Run, on_epoch: EpochHook | None = None) -> Fitted:
    """Epochs, validation after each, the best epoch's weights kept (loop.fit); resumes from the run's checkpoint."""
    return fit(run.model, run.batches, lambda: run.evaluate("val")[0], run.optimizer, run.scheduler, run.cfg.trainer,
               run.device, run.dtype, frozen=run.frozen.modules, on_epoch=on_epoch,
               checkpoint=run.checkpoint, on_step=run.step_hook())  # fmt: skip


@dataclass
class Run:
    """One run set up to train: what `fit` takes, and what `finish` records. A population of sweep trials
    (population/) sets up each member with `set_up` and records it with `finish`, as a single run does."""

    cfg: object
    run_dir: Path
    started: float
    device: torch.device
    dtype: torch.dtype | None
    tokenizer: object
    splits: dict
    encoded: dict[str, list[dict]]
    data_facts: dict
    weights: str | None
    classifier: object  # the SentimentClassifier inside `model`
    random_encoder_state: dict | None
    model: torch.nn.Module
    method: methods.Method
    params: dict
    method_facts: dict | None  # what only the built model knows (LoRA: the rank a budget chose), for the record
    frozen: prefix.FrozenPrefix
    batches: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    checkpoint: Checkpoint
    memory_since: str = "process"  # what the recorded peak memory covers: 'run' when train() could reset it

    def facts_record(self) -> dict:
        return results.facts_fields(self.method, self.method_facts)

    def step_hook(self):
        """The method's per-step hook as loop.fit calls it (None when the method has none)."""
        if not self.method.has_step_hook:
            return None
        total = self.cfg.trainer.epochs * len(self.batches)
        return lambda step: self.method.on_step(self.model, step, total)

    def evaluate(self, name: str):
        rows = self.frozen.split_rows(name)
        return evaluate(self.model, rows, self.tokenizer, self.cfg.trainer.eval_batch_size, self.device, self.dtype)


def set_up(cfg, run_dir: Path) -> Run:
    """Data, model, the method's trainable part, the frozen prefix, batches, optimizer: everything before `fit`."""
    started = time.perf_counter()
    trainer = cfg.trainer
    device = pick_device(trainer.device)
    dtype = pick_dtype(trainer.precision, device)
    log.info("run dir %s | device %s | precision %s", run_dir, device, precision_name(dtype))
    if cfg.model.choice:  # no model= was given: what the default chose and why (choose_model.py)
        log.info("%s", choice_line(OmegaConf.to_container(cfg.model.choice)))

    # ---- data: sample, strip HTML, stratified split, tokenize (weights resolved first: fail fast) ----
    weights = resolve_weights(cfg.model)
    tokenizer = load_tokenizer(cfg.model, weights, trainer.max_length)  # refuses a max_length the model lacks
    splits, encoded, data_facts = data_lib.prepare(cfg.data, tokenizer, trainer.max_length)
    log.info("data %s: %s", cfg.data.name, {name: len(rows) for name, rows in encoded.items()})

    # ---- model: encoder + pooling + head, the method's trainable part (methods/; LoRA through PEFT by default);
    # the frozen layers below the first trained one live, eval or cached ----
    torch.manual_seed(trainer.seed)
    classifier = build_classifier(cfg.model, weights)
    random_encoder_state = plain_state(classifier.encoder) if weights is None else None
    method = methods.of(cfg)
    total_steps = trainer.epochs * math.ceil(len(encoded["train"]) / trainer.batch_size)
    model = method.attach(classifier, cfg, total_steps).to(device)
    params, facts = count_params(model, method), method.run_facts(model, cfg)  # a budget may have chosen the size
    log.info("method %s: trainable %s of %s parameters %s", method.name, f"{params['trainable']:,}",
             f"{params['total']:,}", params["by_group"])  # fmt: skip
    frozen = prefix.prepare(cfg, classifier, encoded, weights, tokenizer, device, dtype)
    fastpath.prepare_for_steps(model, classifier.encoder, dtype)  # cheap dropout masks, frozen weights in dtype

    batches = data_lib.loader(frozen.rows["train"], tokenizer, trainer.batch_size, trainer.seed,
                              trainer.length_grouping)  # fmt: skip
    optimizer = method.optimizer(model, cfg, method_optimizer(cfg))
    scheduler = make_scheduler(optimizer, cfg.optimizer, trainer.epochs * len(batches))
    checkpoint = Checkpoint(run_dir, cfg)  # saved after every epoch; a re-run in this run directory resumes
    return Run(cfg, run_dir, started, device, dtype, tokenizer, splits, encoded, data_facts, weights, classifier,
               random_encoder_state, model, method, params, facts, frozen, batches, optimizer, scheduler,
               checkpoint)  # fmt: skip


def finish(run: Run, fitted: Fitted, on_epoch: EpochHook | None = None, tested=None) -> float | tuple[float, ...]:
    """Test once with the selected epoch's weights (or take `tested`, the (metrics, labels, probabilities) a
    population computed for this member) and write the run's artefacts, metrics.json last. A run the sweep's
    pruner stopped records what it did and raises the pruner's exception; its test split stays unseen."""
    cfg, run_dir, trainer = run.cfg, run.run_dir, run.cfg.trainer
    if fitted.stopped:
        elapsed = time.perf_counter() - run.started
        results.write_record(run_dir, "pruned", cfg, **run.facts_record(), data=run.data_facts, params=run.params,
                             **fitted.record(), time_s=elapsed)  # fmt: skip
        run.checkpoint.finish()
        raise on_epoch.stopped()

    # ---- test once, with the selected epoch's weights ----
    test_started = time.perf_counter()
    test, test_labels, test_probs = tested if tested is not None else run.evaluate("test")
    test_time = None if tested is not None else time.perf_counter() - test_started  # a population's is shared
    log.info("selected epoch %d (%s): val acc %.4f | test acc %.4f f1 %.4f auc %.4f | majority %.4f balanced acc "
             "%.4f f1 minority %.4f", fitted.best["epoch"], trainer.select_on, fitted.best["accuracy"],
             test["accuracy"], test["f1"], test["roc_auc"], test["majority_accuracy"], test["balanced_accuracy"],
             test["f1_minority"])  # fmt: skip
    warnings = [line for line in [imbalance_warning("test", test), one_class_warning("test", test_probs, test)] if line]
    for line in warnings:
        log.warning("%s", line)

    # ---- artefacts; metrics.json last, so its presence means the run completed ----
    if cfg.save_adapter:
        save_trained(run.model, run_dir, run.random_encoder_state, run.method)
    results.write_predictions(run_dir, test_labels, test_probs)
    results.write_record(
        run_dir, "complete", cfg, sha256=results.artefact_hashes(run_dir), **run.facts_record(), data=run.data_facts,
        data_fingerprint=data_lib.fingerprint(run.splits),
        eval_fingerprint=data_lib.fingerprint(run.splits, ("val", "test")),
        split_sizes={name: len(split_rows) for name, split_rows in run.encoded.items()}, params=run.params,
        **fitted.record(), test=test, device=str(run.device), precision=precision_name(run.dtype),
        precision_reason=precision_reason(trainer.precision, run.device),
        prefix_cache_s=run.frozen.seconds, test_time_s=test_time, time_s=time.perf_counter() - run.started,
        peak_memory=peak_memory.record(run.device, run.memory_since), warnings=warnings,
    )  # fmt: skip
    run.checkpoint.finish()
    return results.objectives_of({"val": fitted.best, "params": run.params}, cfg.objectives)


def train_seeds(cfg, run_dir: Path, on_epoch: EpochHook | None = None) -> float | tuple[float, ...]:
    """`train`, or with cfg.seeds one run per seed in seed_<seed>/ subdirectories, returning the mean objective(s).

    Only the first seed reports to the epoch hook: a sweep's pruner judges the trial by it. A run directory that
    already holds this configuration's finished run returns what it recorded; another configuration's is refused
    (rundir/claim.py).
    """
    validate(cfg)
    if (recorded := immutable.claim(cfg, run_dir)) is not None:
        return recorded
    if not cfg.seeds or cfg.dry_run:
        return train(cfg, run_dir, on_epoch)
    values = []
    for index, seed in enumerate(cfg.seeds):
        seed_cfg, seed_dir = copy.deepcopy(cfg), run_dir / f"seed_{seed}"
        with open_dict(seed_cfg):
            seed_cfg.trainer.seed, seed_cfg.seeds = seed, None
        seed_dir.mkdir(parents=True, exist_ok=True)
        recorded = immutable.claim(seed_cfg, seed_dir)
        values.append(recorded if recorded is not None else train(seed_cfg, seed_dir, on_epoch if index == 0 else None))
    log.info("seeds %s: objectives %s", list(cfg.seeds), values)
    means = np.mean(np.array(values, dtype=float).reshape(len(values), -1), axis=0).tolist()
    return means[0] if len(means) == 1 else tuple(means)


def method_optimizer(cfg):
    """cfg.optimizer with method.lr (times method.lr_scale) and method.weight_decay in place of its own, where the
    method sets them."""
    optimizer_cfg = copy.deepcopy(cfg.optimizer)
    if cfg.method.weight_decay is not None:
        optimizer_cfg.weight_decay = cfg.method.weight_decay
    optimizer_cfg.lr = method_lr(cfg)
    return optimizer_cfg


def dry_run(cfg, run_dir: Path) -> float:
    """Parameter counts of the configured architecture at random init: no weights, no data, no network."""
    torch.manual_seed(cfg.trainer.seed)
    method = methods.of(cfg)
    model = method.attach(build_classifier(cfg.model, None), cfg)
    params, facts = count_params(model, method), method.run_facts(model, cfg)
    results.write_record(run_dir, "dry_run", cfg, **results.facts_fields(method, facts), params=params)
    print(method.counts_line(cfg, params, facts))
    return math.nan
