"""One training run: `python -m sentiment_lora.train [overrides]`. Every config and every sweep trial runs this loop.

Read top to bottom: config checks, data, model + LoRA, optimizer, epochs with validation-based selection, one test
evaluation with the selected weights, artefacts. `main` returns the selected validation accuracy for sweepers.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from transformers import get_scheduler

from sentiment_lora import data as data_lib
from sentiment_lora.config import register_configs, validate
from sentiment_lora.errors import UserError
from sentiment_lora.metrics import classification_metrics
from sentiment_lora.model import (
    SentimentClassifier,
    attach_lora,
    build_encoder,
    count_params,
    frozen_depth,
    frozen_modules,
    load_tokenizer,
    plain_state,
    resolve_weights,
    save_trained,
)
from sentiment_lora.results import METRICS_FILE, write_json_atomic, write_predictions
from sentiment_lora.trial import reporter_for

log = logging.getLogger(__name__)
register_configs()
# conf/ sits beside the package (editable install); an absolute path works however the module is started.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: this run stops, a sweep goes on."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"config trainer.device: '{requested}' requested but no CUDA device is available")
    return torch.device(requested)


def cpu_supports_bf16() -> bool:
    # oneDNN's own check: true on CPUs with avx512_bf16 or AMX, where bf16 matmuls are native.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
    return torch.bfloat16 if supported else None


def make_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if cfg.name == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    return torch.optim.SGD(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


def identifiers(cfg: DictConfig) -> dict[str, object]:
    """What a results table needs to say which run this was."""
    return {
        "model": {
            "name": cfg.model.name,
            "source": cfg.model.source,
            "pretrained": cfg.model.pretrained,
            "path": cfg.model.path,
            "pooling": cfg.model.pooling,
        },
        "lora": {
            "rank": cfg.lora.rank,
            "alpha": cfg.lora.alpha,
            "dropout": cfg.lora.dropout,
            "targets": list(cfg.lora.targets),
            "top_layers": cfg.lora.top_layers,
        },
        "data": {
            "name": cfg.data.name,
            "source": cfg.data.source,
            "path": cfg.data.path,
            "n_samples": cfg.data.n_samples,
            "seed": cfg.data.seed,
        },
        "seed": cfg.trainer.seed,
        # Speed levers that can change results, so tables can tell runs apart.
        "speed": {
            "length_grouping": cfg.trainer.length_grouping,
            "frozen_prefix": cfg.trainer.frozen_prefix,
            "attention_dropout": cfg.model.attention_dropout,
        },
        "trial": {"id": cfg.trial.id, "number": cfg.trial.number},
    }


# Tokenized splits by (data config, tokenizer, max_length): the trials of an in-process sweep (Hydra's basic
# launcher) read, strip and tokenize the data once. Rows are never mutated, so sharing them is safe.
_PREPARED: dict[tuple[str, str, int], tuple[dict, dict]] = {}


def prepare_data(data_cfg, tokenizer, max_length: int) -> tuple[dict, dict[str, list[dict]]]:
    key = (OmegaConf.to_yaml(data_cfg), str(tokenizer.name_or_path), max_length)
    if key not in _PREPARED:
        splits = data_lib.load_splits(data_cfg)
        encoded = {name: data_lib.encode(splits[name], tokenizer, max_length) for name in data_lib.SPLITS}
        _PREPARED.clear()  # keep one data set in memory, not one per configuration ever seen
        _PREPARED[key] = (splits, encoded)
    else:
        log.info("data: reusing this process's tokenized splits")
    return _PREPARED[key]


# Frozen-prefix outputs of the last few (encoder, depth, data) combinations: the trials of an in-process sweep
# that freeze the same layers (every head-only trial, say) compute them once. Each entry holds one hidden state
# per review, hence the small bound.
_PREFIXES: OrderedDict[tuple, dict[str, list[dict]]] = OrderedDict()
_PREFIXES_KEPT = 2


def prefix_key(cfg: DictConfig, weights: str | None, depth: int, n_layers: int, dtype) -> tuple:
    """What the frozen prefix's output depends on (dropout does not: the prefix runs without it)."""
    encoder = weights or f"random init, seed {cfg.trainer.seed}"
    pooling = cfg.model.pooling if depth == n_layers else None
    data = (OmegaConf.to_yaml(cfg.data), cfg.trainer.max_length)
    return (encoder, OmegaConf.to_yaml(cfg.model.arch), cfg.model.tokenizer, pooling, depth, data, str(dtype))


def cache_frozen_prefix(
    classifier, rows: list[dict], depth: int, tokenizer, batch_size: int, device, dtype, progress: bool
) -> list[dict]:
    """Each review's frozen-prefix output, computed once without dropout, attached to a copy of its row."""
    order = data_lib.length_order(rows)
    # The collator pads as the loaders do; a DataLoader here would draw from the global RNG and shift dropout.
    collate = data_lib.PaddingCollator(tokenizer)
    cached: list[dict] = [{} for _ in rows]
    classifier.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc="caching frozen prefix", leave=False, disable=not progress):
        chunk = order[start : start + batch_size]
        batch = collate([rows[index] for index in chunk])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            output = classifier.frozen_output(ids, mask, depth).float().cpu()
        for position, index in enumerate(chunk):
            length = len(rows[index]["input_ids"])
            state = output[position] if output.dim() == 2 else output[position, :length]
            cached[index] = {**rows[index], "prefix": state.clone()}
    return cached


def batch_logits(model, batch: dict[str, torch.Tensor], device, dtype) -> torch.Tensor:
    """Logits of one batch: from token ids, or from the cached frozen prefix when the batch carries one."""
    prefix = batch["prefix"].to(device) if "prefix" in batch else None
    with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
        return model(batch["input_ids"].to(device), batch["attention_mask"].to(device), prefix=prefix)


@torch.inference_mode()
def evaluate(model, batches, device, dtype) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    model.eval()
    probs, labels, loss_sum = [], [], 0.0
    for batch in batches:
        logits = batch_logits(model, batch, device, dtype).float()
        target = batch["labels"].to(device)
        loss_sum += torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum").item()
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(target.cpu())
    probs_np, labels_np = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    return classification_metrics(labels_np, probs_np, loss_sum / len(labels_np)), labels_np, probs_np


def dry_run(cfg: DictConfig, run_dir: Path) -> float:
    """Parameter counts of the configured architecture at random init: no weights, no data, no network."""
    encoder = build_encoder(cfg.model, None)
    model = SentimentClassifier(encoder, cfg.model.pooling, cfg.model.head_dropout, cfg.model.layers_path)
    params = count_params(attach_lora(model, cfg.lora, cfg.model.targets_map))
    write_json_atomic(run_dir / METRICS_FILE, {"status": "dry_run", **identifiers(cfg), "params": params})
    groups = params["by_group"]
    print(
        f"{cfg.model.name} lora r={cfg.lora.rank} targets={list(cfg.lora.targets)}: "
        f"trainable {params['trainable']:,} of {params['total']:,} ({params['trainable_pct']:.3f}%) "
        f"= lora {groups['lora']:,} + head {groups['head']:,}"
    )
    return math.nan


def train(cfg: DictConfig, run_dir: Path) -> float | tuple[float, ...]:
    reporter = reporter_for(cfg.trial, run_dir)  # None unless this run is a trial of an Optuna sweep
    validate(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.trainer.seed)
    if cfg.dry_run:
        return dry_run(cfg, run_dir)
    started = time.perf_counter()
    device = pick_device(cfg.trainer.device)
    dtype = pick_dtype(cfg.trainer.precision, device)
    log.info("run dir %s | device %s | precision %s", run_dir, device, "bf16 autocast" if dtype else "fp32")

    # ---- data: sample, strip HTML, stratified split, tokenize once (weights resolved first: fail fast) ----
    weights = resolve_weights(cfg.model)
    tokenizer = load_tokenizer(cfg.model, weights)
    splits, encoded = prepare_data(cfg.data, tokenizer, cfg.trainer.max_length)
    log.info("data %s: %s", cfg.data.name, {name: len(rows) for name, rows in encoded.items()})

    # ---- model: encoder + pooling + head, LoRA through PEFT ----
    torch.manual_seed(cfg.trainer.seed)
    encoder = build_encoder(cfg.model, weights)
    random_encoder_state = plain_state(encoder) if weights is None else None
    classifier = SentimentClassifier(encoder, cfg.model.pooling, cfg.model.head_dropout, cfg.model.layers_path)
    model = attach_lora(classifier, cfg.lora, cfg.model.targets_map).to(device)
    params = count_params(model)
    log.info(
        "trainable %s of %s parameters (%s)", f"{params['trainable']:,}", f"{params['total']:,}", params["by_group"]
    )

    # ---- the frozen prefix (embeddings + layers below the first adapter): live, dropout-free, or cached ----
    depth = frozen_depth(classifier)
    prefix_mode = cfg.trainer.frozen_prefix if depth is not None else "live"
    rows, prefix_cache_s = {name: encoded[name] for name in data_lib.SPLITS}, 0.0
    if prefix_mode == "cache":
        cache_started = time.perf_counter()
        classifier.cached_depth = depth
        n_layers = len(classifier.layers())
        key = prefix_key(cfg, weights, depth, n_layers, dtype)
        reused = key in _PREFIXES
        if not reused:
            _PREFIXES[key] = {
                name: cache_frozen_prefix(
                    classifier,
                    encoded[name],
                    depth,
                    tokenizer,
                    cfg.trainer.eval_batch_size,
                    device,
                    dtype,
                    cfg.trainer.progress,
                )
                for name in data_lib.SPLITS
            }
            while len(_PREFIXES) > _PREFIXES_KEPT:
                _PREFIXES.popitem(last=False)
        _PREFIXES.move_to_end(key)
        rows = _PREFIXES[key]
        prefix_cache_s = time.perf_counter() - cache_started
        cached_what = "the whole encoder (pooled vectors)" if depth == n_layers else f"embeddings + {depth} layers"
        how = "reused from an earlier run in this process" if reused else f"computed in {prefix_cache_s:.1f} s"
        log.info("frozen prefix: %s of %d, %s", cached_what, n_layers, how)
    train_batches = data_lib.loader(
        rows["train"],
        tokenizer,
        cfg.trainer.batch_size,
        seed=cfg.trainer.seed,
        group_by_length=cfg.trainer.length_grouping,
    )
    # Evaluation runs length-sorted (less padding); predictions are put back in data order afterwards.
    val_batches = data_lib.loader(
        [rows["val"][i] for i in data_lib.length_order(rows["val"])], tokenizer, cfg.trainer.eval_batch_size
    )
    test_order = data_lib.length_order(rows["test"])
    test_batches = data_lib.loader([rows["test"][i] for i in test_order], tokenizer, cfg.trainer.eval_batch_size)

    # ---- optimizer and schedule ----
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg.optimizer)
    total_steps = cfg.trainer.epochs * len(train_batches)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.optimizer.scheduler == "constant" else cfg.optimizer.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.optimizer.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    # ---- epochs: train, validate, keep the best epoch's trainable weights ----
    history, best, best_state = [], None, None
    for epoch in range(1, cfg.trainer.epochs + 1):
        model.train()
        if prefix_mode != "live":
            for module in frozen_modules(classifier, depth):
                module.eval()
        epoch_started, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            train_batches,
            desc=f"epoch {epoch}/{cfg.trainer.epochs}",
            disable=not cfg.trainer.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            labels = batch["labels"].to(device)
            loss = loss_fn(batch_logits(model, batch, device, dtype).float(), labels)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch}, batch {seen // cfg.trainer.batch_size + 1}"
                )
            loss.backward()
            if cfg.trainer.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.trainer.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        train_time = time.perf_counter() - epoch_started
        val, _, _ = evaluate(model, val_batches, device, dtype)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "val_accuracy": val["accuracy"],
                "val_loss": val["loss"],
                "train_time_s": train_time,
                "train_samples_per_s": seen / train_time,
                "time_s": time.perf_counter() - epoch_started,
            }
        )
        log.info(
            "epoch %d: train loss %.4f | val acc %.4f loss %.4f | %.1f samples/s",
            epoch,
            loss_sum / seen,
            val["accuracy"],
            val["loss"],
            seen / train_time,
        )
        # Higher accuracy wins; on a tie the lower validation loss does.
        if best is None or (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"]):
            best = {**val, "epoch": epoch}
            best_state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        # The pruner judges the epoch by the sweep's (first) objective, as the study's direction expects.
        epoch_value = {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}.get(cfg.objectives[0])
        if reporter is not None and epoch_value is not None and reporter.should_stop(epoch, epoch_value):
            import optuna

            partial = {
                "status": "pruned",
                **identifiers(cfg),
                "params": params,
                "val": best,
                "history": history,
                "epochs_run": len(history),
                "time_s": time.perf_counter() - started,
            }
            write_json_atomic(run_dir / METRICS_FILE, partial)
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at {cfg.objectives[0]} {epoch_value:.4f}")

    # ---- test once, with the selected epoch's weights ----
    model.load_state_dict(best_state, strict=False)
    test, sorted_labels, sorted_probs = evaluate(model, test_batches, device, dtype)
    test_labels, test_probs = np.empty_like(sorted_labels), np.empty_like(sorted_probs)
    test_labels[test_order], test_probs[test_order] = sorted_labels, sorted_probs
    log.info(
        "selected epoch %d: val acc %.4f | test acc %.4f f1 %.4f auc %.4f",
        best["epoch"],
        best["accuracy"],
        test["accuracy"],
        test["f1"],
        test["roc_auc"],
    )

    # ---- artefacts; metrics.json last, so its presence means the run completed ----
    if cfg.save_adapter:
        save_trained(model, run_dir, random_encoder_state)
    write_predictions(run_dir, test_labels, test_probs)
    metrics = {
        "status": "complete",
        **identifiers(cfg),
        "data_fingerprint": data_lib.fingerprint(splits),
        "split_sizes": {name: len(rows) for name, rows in encoded.items()},
        "params": params,
        "val": best,
        "test": test,
        "history": history,
        "epochs_run": len(history),
        "device": str(device),
        "precision": "bf16" if dtype else "fp32",
        "prefix_cache_s": prefix_cache_s,
        "time_s": time.perf_counter() - started,
    }
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    values = {"val_accuracy": best["accuracy"], "val_loss": best["loss"], "trainable_params": params["trainable"]}
    returned = [float(values[name]) for name in cfg.objectives]
    return returned[0] if len(returned) == 1 else tuple(returned)


def _remove_if_only_hydra_files(run_dir: Path) -> None:
    """A run stopped by a user error leaves no directory behind, unless something else is in it."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return train(cfg, run_dir)
    except Exception as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if not isinstance(err, UserError):
                raise
            print(f"error: {err}", file=sys.stderr)
            _remove_if_only_hydra_files(run_dir)
            sys.exit(2)
        # In a sweep, the sweeper records the error and goes on; the run directory says what happened.
        if not (run_dir / METRICS_FILE).exists():
            failure = {"status": "failed", "error": f"{type(err).__name__}: {err}", **identifiers(cfg)}
            write_json_atomic(run_dir / METRICS_FILE, failure)
        import optuna

        if isinstance(err, optuna.TrialPruned):
            log.info("%s", err)
        else:
            log.error("run failed: %s: %s", type(err).__name__, err)
        raise


def unknown_group_option(args: list[str]) -> str | None:
    """Hydra reports `model=foo` in a dozen lines; this names the group and its options in one."""
    if any(arg.startswith("hydra.searchpath") for arg in args):
        return None  # options may come from other config folders: leave the check to Hydra
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        group = Path(CONF_DIR) / key
        # hydra/* groups also hold options registered by plugins, which have no file here.
        if arg.startswith("-") or not sep or not group.is_dir() or key.startswith("hydra/") or "(" in value:
            continue
        choices = sorted(path.stem for path in group.glob("*.yaml"))
        for option in value.split(","):
            if option not in choices and option != "null":
                return f"unknown {key} '{option}'; choose from {', '.join(choices)}"
    return None


def cli() -> None:
    problem = unknown_group_option(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
