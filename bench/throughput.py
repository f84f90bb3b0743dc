"""Epoch throughput: sentiment-lora against a plain HF Trainer + PEFT script, same model and data, one process.

    python bench/throughput.py --model minilm
    python bench/throughput.py --model distilbert          # DistilBERT architecture, random init (timing only)

Both sides get the same reviews (sentiment-lora's own sample, split and tokenization), max_length, batch size,
LoRA config (rank, alpha, dropout, q+v), AdamW with the same learning rate, weight decay, warmup and linear
schedule, gradient clipping, epochs, seed and thread count, and both validate after every epoch. The baseline is
written the way the transformers and PEFT docs show a custom model: a module that returns the loss, get_peft_model,
DataCollatorWithPadding, Trainer with eval_strategy="epoch". It trains the same architecture as sentiment-lora
(encoder, the model config's pooling, dropout, one-unit head, BCEWithLogitsLoss) so accuracies are comparable.

Both train in the precision the sentiment-lora runs resolve `--precision` to (auto: bf16 autocast where the CPU or
GPU has native bf16): the Trainer gets `bf16=True` exactly when they run bf16, and the table records each side's.

Throughput = training samples / wall time of the epochs including their validation passes (what a user waits for);
setup and the final test pass are left out on both sides. Prints one table; numbers are only comparable within a run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora import data as data_lib  # noqa: E402
from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.model import build_encoder, load_tokenizer  # noqa: E402
from sentiment_lora.results import read_metrics  # noqa: E402
from sentiment_lora.run import train  # noqa: E402
from sentiment_lora.runtime import pick_device, pick_dtype, precision_name  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()

# sentiment-lora configurations by name: no lever, one lever at a time, all of them (see bench/README.md).
PLAIN = ["trainer.length_grouping=false", "trainer.frozen_prefix=live"]
VARIANTS = {
    "plain": PLAIN,
    "grouping": ["trainer.length_grouping=true", "trainer.frozen_prefix=live"],
    "no-attn-dropout": [*PLAIN, "model.attention_dropout=0.0"],
    "prefix-cache": ["trainer.length_grouping=false", "trainer.frozen_prefix=cache"],
    "fast": ["trainer.length_grouping=true", "model.attention_dropout=0.0", "trainer.frozen_prefix=cache"],
}


class PooledClassifier(nn.Module):
    """The docs' custom-model pattern: forward returns {"loss", "logits"} when labels are given."""

    def __init__(self, encoder, pooling: str, head_dropout: float):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        logits = self.head(self.dropout(pooled)).squeeze(-1)
        loss = None if labels is None else nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return {"loss": loss, "logits": logits}


def run_precision(cfg) -> str:
    """The precision a sentiment-lora run of `cfg` trains in on this machine (what run.train resolves)."""
    return precision_name(pick_dtype(cfg.trainer.precision, pick_device(cfg.trainer.device)))


def training_arguments(cfg, out_dir: str):
    """The baseline's TrainingArguments: the settings of the sentiment-lora runs, in their precision."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=cfg.trainer.batch_size,
        per_device_eval_batch_size=cfg.trainer.eval_batch_size,
        num_train_epochs=cfg.trainer.epochs,
        learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        warmup_steps=cfg.optimizer.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        lr_scheduler_type="linear",
        max_grad_norm=cfg.trainer.grad_clip,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=cfg.trainer.seed,
        use_cpu=not torch.cuda.is_available(),
        label_names=["labels"],
        disable_tqdm=True,
        # bf16 autocast (through accelerate) exactly when sentiment-lora autocasts to bf16: comparing an fp32
        # Trainer with a bf16 run on a bf16 machine would time the precision, not the trainers.
        bf16=run_precision(cfg) == "bf16",
    )


def hf_trainer_baseline(cfg, encoded: dict, tokenizer, out_dir: str) -> dict:
    import peft
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    set_seed(cfg.trainer.seed)
    weights = resolve_weights(cfg.model)
    module_names = {"minilm": ["query", "value"], "distilbert": ["q_lin", "v_lin"]}[cfg.model.name]
    model = PooledClassifier(build_encoder(cfg.model, weights), cfg.model.pooling, cfg.model.head_dropout)
    lora = peft.LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=module_names,
        modules_to_save=["head"],
    )
    model = peft.get_peft_model(model, lora)
    args = training_arguments(cfg, out_dir)

    def accuracy(prediction):
        return {"accuracy": float(((prediction.predictions > 0) == (prediction.label_ids > 0.5)).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["val"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    val = trainer.evaluate()
    return {"wall_s": wall, "val_accuracy": val["eval_accuracy"], "precision": "bf16" if args.bf16 else "fp32"}


def sentiment_lora_run(overrides: list[str], out_dir: Path) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    train(cfg, out_dir)
    metrics = read_metrics(out_dir)
    # The frozen-prefix cache is built before the first epoch: it counts as training time.
    wall = metrics["prefix_cache_s"] + sum(epoch["time_s"] for epoch in metrics["history"])
    return {"wall_s": wall, "val_accuracy": metrics["history"][-1]["val_accuracy"], "precision": metrics["precision"]}


def table(rows: list[tuple[str, dict]], n_train: int) -> str:
    """The markdown table; ratios are against the first row."""
    lines = [
        "| trainer | precision | wall s (epochs + val) | samples/s | ratio | val acc (last epoch) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    base = n_train / rows[0][1]["wall_s"]
    for name, result in rows:
        speed = n_train / result["wall_s"]
        lines.append(
            f"| {name} | {result['precision']} | {result['wall_s']:.1f} | {speed:.2f} | {speed / base:.2f}x "
            f"| {result['val_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "distilbert"], default="minilm")
    parser.add_argument("--n-samples", type=int, default=1000, help="balanced IMDB sample, split 70/20/10")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, both trainers")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="trainer.precision of the sentiment-lora runs; the HF Trainer gets what it resolves to",
    )
    parser.add_argument(
        "--runs",
        default="hf,fast",
        help=f"comma-separated, ratios are against the first: hf (the baseline) and any of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--override", action="append", default=[], help="extra override for every sentiment-lora run")
    opts = parser.parse_args()

    torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = ["model=distilbert", "model.source=random"] if opts.model == "distilbert" else ["model=minilm"]
    common = [
        *model,
        f"data.n_samples={opts.n_samples}",
        "data.val_fraction=0.2",
        "data.test_fraction=0.1",
        f"trainer.epochs={opts.epochs}",
        f"trainer.max_length={opts.max_length}",
        f"trainer.batch_size={opts.batch_size}",
        f"optimizer.lr={opts.lr}",
        f"trainer.precision={opts.precision}",
        "trainer.progress=false",
        "save_adapter=false",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=common)
    tokenizer = load_tokenizer(cfg.model, resolve_weights(cfg.model))
    splits = data_lib.load_splits(cfg.data)
    encoded = {name: data_lib.encode(splits[name], tokenizer, cfg.trainer.max_length) for name in ("train", "val")}
    n_train = len(encoded["train"]) * opts.epochs
    lengths = np.array([len(row["input_ids"]) for row in encoded["train"]])
    print(
        f"# {opts.model}: {len(encoded['train'])} train / {len(encoded['val'])} val reviews, max_length "
        f"{opts.max_length} (mean {lengths.mean():.0f} tokens, {np.mean(lengths == opts.max_length):.0%} truncated), "
        f"batch {opts.batch_size}, lr {opts.lr:g}, {opts.epochs} epoch(s), {opts.threads} threads, "
        f"precision {opts.precision} -> {run_precision(cfg)}, torch {torch.__version__}",
        flush=True,
    )

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in opts.runs.split(","):
            if name == "hf":
                rows.append(("HF Trainer + PEFT", hf_trainer_baseline(cfg, encoded, tokenizer, scratch)))
            else:
                levers = VARIANTS[name] + opts.override
                result = sentiment_lora_run(common + levers, Path(scratch) / name)
                rows.append((f"sentiment-lora {name} (`{' '.join(levers)}`)", result))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)

    print("\n" + table(rows, n_train))


if __name__ == "__main__":
    main()
