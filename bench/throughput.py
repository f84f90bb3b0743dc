"""Epoch throughput: sentiment-lora against a plain HF Trainer + PEFT script, same model and data, one process.

    python bench/throughput.py --model minilm --runs hf,plain,fast            # the seed layout: q+v, every layer
    python bench/throughput.py --model minilm --runs hf-recipe,default        # the default recipe's layout
    python bench/throughput.py --model distilbert          # DistilBERT architecture, random init (timing only)
    python bench/throughput.py --model minilm --runs default,linear_probe,bitfit,ia3,full   # the methods

Both sides get the same reviews (sentiment-lora's own draw and tokenization, its truncation included), max_length,
batch size, LoRA config (rank, alpha, dropout, modules, layers), AdamW with the same learning rate, weight decay,
warmup and linear schedule, gradient clipping, epochs, seed and thread count, and both validate after every epoch.
The baseline is written the way the transformers and PEFT docs show a custom model: a module that returns the loss,
get_peft_model, DataCollatorWithPadding, Trainer with eval_strategy="epoch". It trains the same architecture as
sentiment-lora (encoder, the model config's pooling, dropout, one-unit head, BCEWithLogitsLoss) so accuracies are
comparable.

Two layouts. `hf` and the lever variants (`plain`, `grouping`, ...) use the seed configuration (q+v in every layer,
lr 5e-4, head truncation: `recipe@_global_=seed`), the layout the lever table was first measured on. `hf-recipe`
and `default` use the model's default recipe (for MiniLM: every module of the top 3 layers, attention dropout off,
head+tail truncation, lr 1e-3): `default` is `python -m sentiment_lora.train` as is, frozen-prefix cache included,
and `hf-recipe` is what a user would write instead with PEFT alone: the same modules in the same layers through
LoraConfig's `layers_to_transform`. Where the recipe puts LoRA on the head, the Trainer trains the head whole
(PEFT's modules_to_save; `layers_to_transform` admits only modules inside a layer): 385 parameters instead of LoRA's
1,540, which changes no timing that matters.

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
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora import encoders, methods  # noqa: E402
from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.data import pipeline as data_lib  # noqa: E402
from sentiment_lora.methods.targets import adapted_layers, matched_modules, target_pattern  # noqa: E402
from sentiment_lora.model import build_encoder, load_tokenizer  # noqa: E402
from sentiment_lora.run import train  # noqa: E402
from sentiment_lora.rundir.record import read_metrics  # noqa: E402
from sentiment_lora.runtime import pick_device, pick_dtype, precision_name  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()

# sentiment-lora configurations by name: no lever, one lever at a time, all of them (see bench/README.md), on the
# seed layout; `default` is the model's default recipe, untouched.
PLAIN = ["trainer.length_grouping=false", "trainer.frozen_prefix=live"]
VARIANTS = {
    "plain": PLAIN,
    "grouping": ["trainer.length_grouping=true", "trainer.frozen_prefix=live"],
    "no-attn-dropout": [*PLAIN, "model.attention_dropout=0.0"],
    "prefix-cache": ["trainer.length_grouping=false", "trainer.frozen_prefix=cache"],
    "fast": ["trainer.length_grouping=true", "model.attention_dropout=0.0", "trainer.frozen_prefix=cache"],
    "default": [],
}
# The other fine-tuning methods (conf/method/), each on the model's default recipe as `default` is: what one epoch
# of each costs beside LoRA's.
METHOD_RUNS = {name: [f"method={name}"] for name in methods.names() if name != methods.DEFAULT}
# The HF Trainer baselines and the layout each trains: `hf` the seed layout, `hf-recipe` the default recipe's.
BASELINES = {"hf": "HF Trainer + PEFT", "hf-recipe": "HF Trainer + PEFT, the default recipe's layout"}
# Models with a default recipe (conf/recipe/): the seed layout is `recipe@_global_=seed` there, the schema's own
# defaults elsewhere.
WITH_RECIPE = ("minilm",)


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


def peft_layout(model: nn.Module, cfg) -> dict:
    """LoraConfig keys for the run's adapter layout as a PEFT user writes it: the adapted Linears of every layer
    by name (the architecture table's, or model.targets_map), narrowed to the adapted layers by
    `layers_to_transform` (None: every layer)."""
    model_type = model.encoder.config.model_type
    family = encoders.family(model_type, hand_map=bool(cfg.model.targets_map))
    targets_map = dict(cfg.model.targets_map) or encoders.targets_map(family)
    targets = encoders.resolve_targets(family, model_type, list(cfg.lora.targets))
    names = matched_modules(model, target_pattern(targets_map, [target for target in targets if target != "head"]))
    layers_path = cfg.model.layers_path or family.layers_path
    layers = adapted_layers(len(attrgetter(layers_path)(model.encoder)), cfg.lora.top_layers, cfg.lora.layers)
    layout = {"target_modules": names}
    if layers is not None:
        layout |= {"layers_to_transform": layers, "layers_pattern": layers_path.rsplit(".", 1)[-1]}
    return layout


def hf_trainer_baseline(cfg, encoded: dict, tokenizer, out_dir: str) -> dict:
    import peft
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    set_seed(cfg.trainer.seed)
    weights = resolve_weights(cfg.model)
    model = PooledClassifier(build_encoder(cfg.model, weights), cfg.model.pooling, cfg.model.head_dropout)
    lora = peft.LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        modules_to_save=["head"],
        **peft_layout(model, cfg),
    )
    model = peft.get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
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
    return {
        "wall_s": wall,
        "val_accuracy": val["eval_accuracy"],
        "precision": "bf16" if args.bf16 else "fp32",
        "trainable": trainable,
    }


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def sentiment_lora_run(overrides: list[str], out_dir: Path) -> dict:
    cfg = composed(overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    train(cfg, out_dir)
    metrics = read_metrics(out_dir)
    # The frozen-prefix cache is built before the first epoch: it counts as training time.
    wall = metrics["prefix_cache_s"] + sum(epoch["time_s"] for epoch in metrics["history"])
    return {
        "wall_s": wall,
        "val_accuracy": metrics["history"][-1]["val_accuracy"],
        "precision": metrics["precision"],
        "trainable": metrics["params"]["trainable"],
    }


def table(rows: list[tuple[str, dict]], n_train: int) -> str:
    """The markdown table; ratios are against the first row."""
    lines = [
        "| trainer | precision | trainable | wall s (epochs + val) | samples/s | ratio | val acc (last epoch) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = n_train / rows[0][1]["wall_s"]
    for name, result in rows:
        speed = n_train / result["wall_s"]
        lines.append(
            f"| {name} | {result['precision']} | {result['trainable']:,} | {result['wall_s']:.1f} | {speed:.2f} "
            f"| {speed / base:.2f}x "
            f"| {result['val_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "distilbert", "tiny"], default="minilm")
    parser.add_argument("--data-csv", type=Path, help="a CSV (text,label) instead of the IMDB draw")
    parser.add_argument("--n-train", type=int, default=700, help="training reviews, drawn balanced")
    parser.add_argument("--n-val", type=int, default=200, help="validation reviews (timed every epoch)")
    parser.add_argument("--n-test", type=int, default=100, help="test reviews (the final pass, not timed)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, help="peak learning rate of both trainers (default: each layout's own)")
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
        help=f"comma-separated, ratios are against the first: {', '.join(BASELINES)} (the baselines) and any of "
        f"{', '.join(VARIANTS)}, or a method: {', '.join(METHOD_RUNS)}",
    )
    parser.add_argument("--override", action="append", default=[], help="extra override for every sentiment-lora run")
    opts = parser.parse_args()
    choices = [*BASELINES, *VARIANTS, *METHOD_RUNS]
    unknown = [name for name in opts.runs.split(",") if name not in choices]
    if unknown:
        parser.error(f"--runs: unknown {unknown[0]!r}; choose from {', '.join(choices)}")

    torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = {"distilbert": ["model=distilbert", "model.source=random"]}.get(opts.model, [f"model={opts.model}"])
    data = ["data=csv", f"data.path={opts.data_csv.resolve()}"] if opts.data_csv else []
    common = [
        *model,
        *data,
        f"data.n_train={opts.n_train}",
        f"data.n_val={opts.n_val}",
        f"data.n_test={opts.n_test}",
        f"trainer.epochs={opts.epochs}",
        f"trainer.max_length={opts.max_length}",
        f"trainer.batch_size={opts.batch_size}",
        *([f"optimizer.lr={opts.lr}"] if opts.lr else []),
        f"trainer.precision={opts.precision}",
        "trainer.progress=false",
        "save_adapter=false",
    ]
    seed_layout = ["recipe@_global_=seed"] if opts.model in WITH_RECIPE else []
    layouts = {"hf": seed_layout, "hf-recipe": []}
    cfg = composed(common + seed_layout)
    tokenizer = load_tokenizer(cfg.model, resolve_weights(cfg.model))
    # Each layout's own truncation (the recipe's head+tail, the seed's head): the Trainer gets the same tokens.
    encoded = {
        name: data_lib.prepare(composed(common + layout).data, tokenizer, cfg.trainer.max_length)[1]
        for name, layout in layouts.items()
    }
    n_train = len(encoded["hf"]["train"]) * opts.epochs
    lengths = np.array([len(row["input_ids"]) for row in encoded["hf"]["train"]])
    print(
        f"# {opts.model}: {len(encoded['hf']['train'])} train / {len(encoded['hf']['val'])} val reviews, max_length "
        f"{opts.max_length} (mean {lengths.mean():.0f} tokens, {np.mean(lengths == opts.max_length):.0%} truncated), "
        f"batch {opts.batch_size}, {opts.epochs} epoch(s), {opts.threads} threads, "
        f"precision {opts.precision} -> {run_precision(cfg)}, torch {torch.__version__}",
        flush=True,
    )

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in opts.runs.split(","):
            if name in BASELINES:
                layout_cfg = composed(common + layouts[name])
                result = hf_trainer_baseline(layout_cfg, encoded[name], tokenizer, scratch)
                rows.append((f"{BASELINES[name]} (lr {layout_cfg.optimizer.lr:g})", result))
            else:
                if name in METHOD_RUNS:
                    levers = METHOD_RUNS[name] + opts.override  # on the default recipe, as `default`
                else:
                    levers = (seed_layout + VARIANTS[name] if name != "default" else []) + opts.override
                result = sentiment_lora_run(common + levers, Path(scratch) / name)
                rows.append((f"sentiment-lora {name} (`{' '.join(levers) or 'the default recipe'}`)", result))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)

    print("\n" + table(rows, n_train))


if __name__ == "__main__":
    main()
