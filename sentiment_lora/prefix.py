"""The frozen prefix: the embeddings and the encoder layers below the first adapter hold no trainable parameter.

`trainer.frozen_prefix` says how a run treats them: 'live' runs them in train mode every step (dropout on, as a
plain HF/PEFT loop does), 'eval' runs them without dropout, 'cache' computes their output once per review
without dropout and trains the layers above on it (the same numbers as 'eval'). method=linear_probe always
caches (the whole encoder is frozen: its pooled vectors are the probe's features). Cached outputs are memoized per
process, so the trials of an in-process sweep that freeze the same layers compute them once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from sentiment_lora import data as data_lib
from sentiment_lora import memo
from sentiment_lora.model import SentimentClassifier, check_frozen_prefix, frozen_depth, frozen_modules
from sentiment_lora.runtime import autocast

log = logging.getLogger(__name__)


@dataclass
class FrozenPrefix:
    mode: str  # live, eval or cache (live whenever nothing below the adapters is frozen)
    rows: dict[str, list[dict]]  # per split: the tokenized rows, with a cached `prefix` tensor under 'cache'
    modules: list[torch.nn.Module] = field(default_factory=list)  # kept in eval mode while training ('eval', 'cache')
    seconds: float = 0.0  # time spent computing (or fetching) the cache


def memo_key(cfg, weights: str | None, depth: int, n_layers: int, dtype) -> tuple:
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
        with autocast(device, dtype):
            output = classifier.frozen_output(ids, mask, depth).float().cpu()
        for position, index in enumerate(chunk):
            length = len(rows[index]["input_ids"])
            state = output[position] if output.dim() == 2 else output[position, :length]
            cached[index] = {**rows[index], "prefix": state.clone()}
    return cached


def prepare(
    cfg, classifier: SentimentClassifier, encoded: dict[str, list[dict]], weights, tokenizer, device, dtype
) -> FrozenPrefix:
    depth = frozen_depth(classifier)
    # A linear probe reads fixed features: the frozen encoder's pooled vectors, computed once per review.
    mode = "cache" if cfg.method.name == "linear_probe" else cfg.trainer.frozen_prefix
    if depth is None or mode == "live":
        return FrozenPrefix("live", encoded)
    check_frozen_prefix(classifier, mode, depth)  # a family it would be wrong for: refused
    frozen = frozen_modules(classifier, depth)
    if mode == "eval":
        return FrozenPrefix("eval", encoded, frozen)
    started = time.perf_counter()
    classifier.cached_depth = depth
    n_layers = len(classifier.layers())

    def compute():
        return {
            name: cache_frozen_prefix(
                classifier, encoded[name], depth, tokenizer, cfg.trainer.eval_batch_size, device, dtype,
                cfg.trainer.progress,
            )
            for name in data_lib.SPLITS
        }  # fmt: skip

    rows, reused = memo.FROZEN_PREFIXES.get(memo_key(cfg, weights, depth, n_layers, dtype), compute)
    seconds = time.perf_counter() - started
    cached_what = "the whole encoder (pooled vectors)" if depth == n_layers else f"the input of layer {depth}"
    how = "reused from an earlier run in this process" if reused else f"computed in {seconds:.1f} s"
    log.info("frozen prefix: %s of %d, %s", cached_what, n_layers, how)
    return FrozenPrefix("cache", rows, frozen, seconds)
