"""The population's epoch loop: loop.fit's, for several members at once over one frozen encoder.

Per step, every member draws its next batch from its own loader (its own seeded order), the batches are stacked,
the shared encoder runs once, each member's head reads its own rows, and each member's loss is its own batch's
mean. The backward pass runs once over the sum of the members' losses: the members' parameters are disjoint and
a row's activations depend on its own review only, so each member's gradient is exactly its own loss's. Then
each member clips, steps its own optimizer and schedule. Validation and test are stacked the same way.

What a member gets as a single run gets it: its history entries, its selected epoch (trainer.select_on), its
epoch hook (a sweep's pruner; a stopped member leaves, the rest go on), its checkpoint after every epoch. A member
whose loss is not finite, or whose step or hook raises, leaves with its error; the others' numbers do not change.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import numpy as np
import torch

from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.loop import SELECTION_KEYS, Fitted, TrainingDiverged, history_entry, log_epoch
from sentiment_lora.metrics import classification_metrics
from sentiment_lora.model import classifier_of
from sentiment_lora.population.stacked import Stacker, frozen_names, head_logits, shared_encoder
from sentiment_lora.runtime import autocast

log = logging.getLogger(__name__)


class Member:
    """One trial of the population: its Run (run.set_up), epoch hook, and how far it got."""

    def __init__(self, run, hook, label: str, context=nullcontext):
        self.run, self.hook, self.label = run, hook, label
        self.context = context  # entered around everything done for this member alone (its log lines)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict | None = None
        self.error: BaseException | None = None
        self.stopped = False
        self.trainable = [p for p in run.model.parameters() if p.requires_grad]

    @property
    def training(self) -> bool:
        return self.error is None and not self.stopped and len(self.history) < self.run.cfg.trainer.epochs

    def fitted(self) -> Fitted:
        return Fitted(self.best, self.history, stopped=self.stopped, selected_on=self.run.cfg.trainer.select_on)


class Population:
    def __init__(self, members: list[Member]):
        first = members[0].run
        self.members = members
        self.device, self.dtype, self.tokenizer = first.device, first.dtype, first.tokenizer
        self.shared, self.rows = shared_encoder(
            first, [classifier_of(member.run.model) for member in members], first.device
        )
        self.frozen = frozen_names(first)
        self.stack = Stacker(first.tokenizer)

    def _train_mode(self, training: bool) -> None:
        self.shared.train(training)
        if training:
            for name, module in self.shared.named_modules():
                if name in self.frozen:
                    module.eval()
        for member in self.members:
            classifier_of(member.run.model).train(training)

    def _pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        prefix = batch["prefix"].to(self.device) if "prefix" in batch else None
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        return self.shared.features(ids, mask, prefix=prefix)

    # ---- training ----

    def train_epoch(self, active: list[int], epoch: int) -> dict[int, tuple[float, int]]:
        """One epoch for the members at `active` (indices); returns each survivor's (mean loss, reviews seen)."""
        loss_fn = torch.nn.BCEWithLogitsLoss()
        sums = {index: [0.0, 0] for index in active}
        iterators = {index: iter(self.members[index].run.batches) for index in active}
        step = 0
        while True:
            drawn = {}
            for index in list(iterators):
                batch = next(iterators[index], None)
                if batch is None:
                    del iterators[index]
                else:
                    drawn[index] = batch
            if not drawn:
                break
            step += 1
            order = [index for index in active if index in drawn and self.members[index].error is None]
            if not order:
                break
            self.rows.members[:] = order
            self.rows.counts[:] = [len(drawn[index]["labels"]) for index in order]
            stacked = self.stack([drawn[index] for index in order])
            with autocast(self.device, self.dtype):
                pooled = self._pooled(stacked)
            losses = []
            for index, rows in zip(order, self.rows.slices(), strict=True):
                member = self.members[index]
                with autocast(self.device, self.dtype):
                    logits = head_logits(member.run, pooled[rows])
                labels = drawn[index]["labels"].to(self.device)
                loss = loss_fn(logits.float(), labels)
                if not torch.isfinite(loss):
                    clip = "" if member.run.cfg.trainer.grad_clip else " or clip gradients (trainer.grad_clip=1.0)"
                    self._leave(member, TrainingDiverged(
                        f"training diverged: loss is {loss.item()} at epoch {epoch}, batch {step}; lower "
                        f"optimizer.lr{clip}"))  # fmt: skip
                    continue
                losses.append((index, loss, len(labels)))
            if losses:
                # One backward for all: each member's parameters receive only its own loss's gradient.
                torch.stack([loss for _, loss, _ in losses]).sum().backward()
            for index, loss, count in losses:
                member = self.members[index]
                try:
                    clip = member.run.cfg.trainer.grad_clip
                    if clip:
                        torch.nn.utils.clip_grad_norm_(member.trainable, clip)
                    member.run.optimizer.step()
                    member.run.scheduler.step()
                    member.run.optimizer.zero_grad(set_to_none=True)
                except Exception as err:  # noqa: BLE001 - this member fails; the others go on
                    self._leave(member, err)
                    continue
                sums[index][0] += loss.item() * count
                sums[index][1] += count
        return {index: (total / seen, seen) for index, (total, seen) in sums.items()
                if seen and self.members[index].error is None}  # fmt: skip

    def _leave(self, member: Member, error: BaseException) -> None:
        member.error = error
        with member.context():
            log.error("population member %s leaves: %s: %s", member.label, type(error).__name__, error)

    def fit(self) -> None:
        """Every member's epochs, validation after each; each member's best epoch's weights left in its model."""
        epoch = 0
        while active := [index for index, member in enumerate(self.members) if member.training]:
            epoch += 1
            self._train_mode(True)
            started = time.perf_counter()
            trained = self.train_epoch(active, epoch)
            train_time = time.perf_counter() - started
            validated = self.evaluate([index for index in active if index in trained], "val")
            elapsed = time.perf_counter() - started
            for index, (val, _labels, _probs) in validated.items():
                self._end_epoch(self.members[index], epoch, trained[index], val, train_time, elapsed)
        for member in self.members:
            if member.error is None and not member.stopped and member.best_state is not None:
                member.run.model.load_state_dict(member.best_state, strict=False)

    def _end_epoch(self, member: Member, epoch: int, trained, val: dict, train_time: float, elapsed: float) -> None:
        run = member.run
        train_loss, seen = trained
        # train_time_s is the population's shared time: a member's samples/s is its own reviews over that time.
        entry = history_entry(epoch, train_loss, seen, val, train_time, elapsed)
        with member.context():
            try:
                member.history.append(entry)
                log_epoch(entry)
                rank = SELECTION_KEYS[run.cfg.trainer.select_on]
                if member.best is None or rank(val) > rank(member.best):
                    member.best = {**val, "epoch": epoch}
                    member.best_state = {
                        name: p.detach().clone() for name, p in run.model.named_parameters() if p.requires_grad
                    }
                run.checkpoint.save(epoch, run.model, run.optimizer, run.scheduler, run.batches, member.history,
                                    member.best, member.best_state)  # fmt: skip
                if member.hook is not None and member.hook(epoch, val, entry):
                    member.stopped = True
            except Exception as err:  # noqa: BLE001 - this member fails; the others go on
                self._leave(member, err)

    # ---- evaluation ----

    @torch.inference_mode()
    def evaluate(self, indices: list[int], split: str, max_rows: int | None = None) -> dict[int, tuple]:
        """(metrics, labels, probabilities) of `split` for each member at `indices`, in the order of the split's
        rows, as loop.evaluate computes them: batches longest first, each stacked once per member."""
        if not indices:
            return {}
        self._train_mode(False)
        first = self.members[indices[0]].run
        rows = first.frozen.split_rows(split)
        batch_size = first.cfg.trainer.eval_batch_size
        per_chunk = max(1, (max_rows or len(indices) * batch_size) // batch_size)
        order = data_lib.length_order(rows)
        results = {}
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            self.rows.members[:] = chunk
            losses = dict.fromkeys(chunk, 0.0)
            probs: dict[int, list] = {index: [] for index in chunk}
            for batch in data_lib.loader([rows[i] for i in order], self.tokenizer, batch_size):
                self.rows.counts[:] = [len(batch["labels"])] * len(chunk)
                stacked = self.stack([batch] * len(chunk))
                with autocast(self.device, self.dtype):
                    pooled = self._pooled(stacked)
                target = batch["labels"].to(self.device)
                for index, part in zip(chunk, self.rows.slices(), strict=True):
                    with autocast(self.device, self.dtype):
                        logits = head_logits(self.members[index].run, pooled[part]).float()
                    losses[index] += torch.nn.functional.binary_cross_entropy_with_logits(
                        logits, target, reduction="sum"
                    ).item()
                    probs[index].append(torch.sigmoid(logits).cpu())
            labels = np.array([row["labels"] for row in rows], dtype=np.float32)
            for index in chunk:
                sorted_probs = torch.cat(probs[index]).numpy()
                in_order = np.empty_like(sorted_probs)
                in_order[order] = sorted_probs
                metrics = classification_metrics(labels, in_order, losses[index] / len(labels))
                results[index] = (metrics, labels, in_order)
        return results
