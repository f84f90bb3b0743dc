"""Fit and evaluate: the epoch loop every configuration shares, and inference that returns predictions in data
order. Nothing here knows about sweeps: a per-epoch hook (a sweep's pruner, say) may ask the loop to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.metrics import classification_metrics
from sentiment_lora.rundir.checkpoint import Checkpoint
from sentiment_lora.runtime import autocast

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: this run stops with one line, a sweep records a failed trial and goes on.

    A UserError because the way out is in the config (a lower learning rate, gradient clipping).
    """


class EpochHook(Protocol):
    """Called after each epoch with its validation metrics and its history entry (training loss, timings); True
    stops training (a pruned sweep trial)."""

    def __call__(self, epoch: int, val: dict[str, float], entry: dict | None = None) -> bool: ...

    def stopped(self) -> Exception:
        """The exception that tells the sweeper this run was stopped."""
        ...


# A method's per-step hook (methods.base.Method.on_step), called with the global optimizer step, from 1.
StepHook = Callable[[int], None]

# trainer.select_on: the key an epoch's validation metrics are ranked by, higher better (ties: lower loss).
SELECTION_KEYS = {
    "val_acc": lambda val: (val["accuracy"], -val["loss"]),
    "val_balanced_acc": lambda val: (val["balanced_accuracy"], -val["loss"]),
    "val_f1_minority": lambda val: (val["f1_minority"], -val["loss"]),
    "val_loss": lambda val: (-val["loss"], val["accuracy"]),
}


@dataclass
class Fitted:
    best: dict  # the selected epoch's validation metrics, plus its "epoch"
    history: list[dict]  # per epoch: train loss, validation accuracy, balanced accuracy, F1 minority, loss, timings
    stopped: bool  # the epoch hook stopped training before the last epoch
    selected_on: str = "val_acc"  # trainer.select_on: the metric that chose `best`

    def record(self) -> dict:
        return {"val": self.best, "selected_on": self.selected_on, "history": self.history,
                "epochs_run": len(self.history)}  # fmt: skip


def batch_logits(model, batch: dict[str, torch.Tensor], device, dtype) -> torch.Tensor:
    """Logits of one batch: from token ids, or from the cached frozen prefix when the batch carries one."""
    prefix = batch["prefix"].to(device) if "prefix" in batch else None
    with autocast(device, dtype):
        return model(batch["input_ids"].to(device), batch["attention_mask"].to(device), prefix=prefix)


@torch.inference_mode()
def predict(
    model, rows: list[dict], tokenizer, batch_size: int, device, dtype, on_batch=None, progress: bool = False
) -> np.ndarray:
    """Probabilities of `rows`, in the order of `rows`.

    Batches run longest first (each pads to little more than its own length); predictions are put back.
    `on_batch(logits, batch)` sees each batch's fp32 logits; `progress` shows a tqdm bar on a terminal.
    """
    model.eval()
    order = data_lib.length_order(rows)
    probs = []
    batches = data_lib.loader([rows[index] for index in order], tokenizer, batch_size)
    for batch in tqdm(batches, desc="predict", disable=None if progress else True, leave=False):
        logits = batch_logits(model, batch, device, dtype).float()
        if on_batch is not None:
            on_batch(logits, batch)
        probs.append(torch.sigmoid(logits).cpu())
    sorted_probs = torch.cat(probs).numpy()
    probs_np = np.empty_like(sorted_probs)
    probs_np[order] = sorted_probs
    return probs_np


def evaluate(model, rows: list[dict], tokenizer, batch_size: int, device, dtype):
    """Metrics, labels and probabilities of `rows`, in the order of `rows` (computed by `predict`)."""
    loss_sum = 0.0

    def add_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        nonlocal loss_sum
        target = batch["labels"].to(logits.device)
        loss_sum += torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum").item()

    probs = predict(model, rows, tokenizer, batch_size, device, dtype, on_batch=add_loss)
    labels = np.array([row["labels"] for row in rows], dtype=np.float32)
    return classification_metrics(labels, probs, loss_sum / len(labels)), labels, probs


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None is tqdm's own "only on a terminal" (off when stderr is a file, as in a cluster job)."""
    return None if progress is None else not progress


def train_epoch(
    model, batches, optimizer, scheduler, trainer_cfg, epoch: int, device, dtype, on_step: StepHook | None = None
) -> tuple[float, int]:
    """One pass over the training batches; returns the mean training loss and the number of reviews seen.
    on_step(global step) runs after each optimizer step, before the gradients are cleared (AdaLoRA reads them)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loss_sum, seen = 0.0, 0
    bar = tqdm(
        batches, desc=f"epoch {epoch}/{trainer_cfg.epochs}", disable=bar_disabled(trainer_cfg.progress), leave=False
    )
    for step, batch in enumerate(bar, start=1):
        labels = batch["labels"].to(device)
        loss = loss_fn(batch_logits(model, batch, device, dtype).float(), labels)
        if not torch.isfinite(loss):
            clip = "" if trainer_cfg.grad_clip else " or clip gradients (trainer.grad_clip=1.0)"
            raise TrainingDiverged(
                f"training diverged: loss is {loss.item()} at epoch {epoch}, batch {step}; lower optimizer.lr{clip}"
            )
        loss.backward()
        if trainer_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, trainer_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step((epoch - 1) * len(batches) + step)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, seen = loss_sum + loss.item() * len(labels), seen + len(labels)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    return loss_sum / seen, seen


def fit(
    model,
    batches,
    validate: Callable[[], dict[str, float]],
    optimizer,
    scheduler,
    trainer_cfg,
    device,
    dtype,
    frozen: list[torch.nn.Module] = (),
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
    on_step: StepHook | None = None,
) -> Fitted:
    """Train `trainer_cfg.epochs` epochs, validate after each, and leave the best epoch's trainable weights in
    the model. Best by trainer.select_on: higher validation accuracy (or balanced accuracy, or F1 of the smaller
    class), on a tie lower validation loss; or lowest validation loss. `frozen` modules stay in eval mode (no
    dropout) while the rest trains. With a checkpoint, each epoch ends saved, and a saved run resumes.
    """
    rank = SELECTION_KEYS[trainer_cfg.select_on]
    done, history, best, best_state = 0, [], None, None
    if checkpoint is not None and (saved := checkpoint.restore(model, optimizer, scheduler, batches)):
        done, history, best, best_state = saved
    for epoch in range(done + 1, trainer_cfg.epochs + 1):
        model.train()
        for module in frozen:
            module.eval()
        started = time.perf_counter()
        train_loss, seen = train_epoch(model, batches, optimizer, scheduler, trainer_cfg, epoch, device, dtype, on_step)
        train_time = time.perf_counter() - started
        val = validate()
        history.append(history_entry(epoch, train_loss, seen, val, train_time, time.perf_counter() - started))
        log_epoch(history[-1])
        if best is None or rank(val) > rank(best):
            best = {**val, "epoch": epoch}
            best_state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        if checkpoint is not None:
            checkpoint.save(epoch, model, optimizer, scheduler, batches, history, best, best_state)
        if on_epoch is not None and on_epoch(epoch, val, history[-1]):
            return Fitted(best, history, stopped=True, selected_on=trainer_cfg.select_on)
    model.load_state_dict(best_state, strict=False)
    return Fitted(best, history, stopped=False, selected_on=trainer_cfg.select_on)


def history_entry(epoch: int, train_loss: float, seen: int, val: dict, train_time: float, elapsed: float) -> dict:
    """One epoch of metrics.json's history: training loss, validation metrics, timings."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_accuracy": val["accuracy"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "val_f1_minority": val["f1_minority"],
        "val_loss": val["loss"],
        "train_time_s": train_time,
        "train_samples_per_s": seen / train_time,
        "time_s": elapsed,
    }


def log_epoch(entry: dict) -> None:
    log.info(
        "epoch %d: train loss %.4f | val acc %.4f loss %.4f | %.1f samples/s",
        entry["epoch"],
        entry["train_loss"],
        entry["val_accuracy"],
        entry["val_loss"],
        entry["train_samples_per_s"],
    )
