"""The frozen prefix: the embeddings and the encoder layers below the first adapter hold no trainable parameter.

`trainer.frozen_prefix` says how a run treats them: 'live' runs them in train mode every step (dropout on, as a
plain HF/PEFT loop does), 'eval' runs them without dropout, 'cache' computes their output once per review
without dropout and trains the layers above on it (the same numbers as 'eval'; with only the embeddings below the
first adapted layer 'cache' runs as 'eval': their output is cheap to recompute and large to hold).
method=linear_probe always caches (the whole encoder is frozen: its pooled vectors are the probe's features).
Cached outputs are memoized per process, so the trials of an in-process sweep that freeze the same layers compute
them once. The test split's is computed when the test pass asks for it, after training: it is read once per run, so
holding it through training bought nothing and cost its size in memory (1.4 GB for the default draw's 4,000 test
reviews at MiniLM's depth 3).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from sentiment_lora import memo, methods
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.loop import bar_disabled
from sentiment_lora.model import SentimentClassifier, check_frozen_prefix, frozen_modules
from sentiment_lora.runtime import autocast

log = logging.getLogger(__name__)


@dataclass
class FrozenPrefix:
    mode: str  # live, eval or cache (live whenever nothing below the adapters is frozen)
    rows: dict[str, list[dict]]  # per split: the tokenized rows, with a cached `prefix` tensor under 'cache'
    modules: list[torch.nn.Module] = field(default_factory=list)  # kept in eval mode while training ('eval', 'cache')
    seconds: float = 0.0  # time spent computing (or fetching) the cache before training
    # splits whose cache is computed on first use (the test split), replacing their rows in `rows` then
    pending: dict[str, Callable[[], list[dict]]] = field(default_factory=dict)

    def split_rows(self, name: str) -> list[dict]:
        """The rows of split `name`, with their cached prefix under 'cache' (computed now if it was pending)."""
        if name in self.pending:
            self.rows[name] = self.pending.pop(name)()
        return self.rows[name]


def memo_key(cfg, weights: str | None, depth: int, n_layers: int, dtype, rows: list[dict]) -> tuple:
    """What one split's frozen-prefix output depends on (dropout does not: the prefix runs without it): the
    encoder, the depth and the split's token ids themselves. Keyed by the tokens rather than the data config, so
    runs that share an evaluation set but not a training sample (a learning curve's sizes) compute it once."""
    encoder = weights or f"random init, seed {cfg.trainer.seed}"
    pooling = cfg.model.pooling if depth == n_layers else None
    tokens = hashlib.sha256()
    for row in rows:
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        tokens.update(len(ids).to_bytes(4, "little") + ids.tobytes())
    return (encoder, OmegaConf.to_yaml(cfg.model.arch), cfg.model.tokenizer, pooling, depth, str(dtype),
            tokens.hexdigest())  # fmt: skip


def cache_frozen_prefix(
    classifier, rows: list[dict], depth: int, tokenizer, batch_size: int, device, dtype, progress: bool
) -> list[dict]:
    """Each review's frozen-prefix output, computed once without dropout, in the order of `rows`."""
    order = data_lib.length_order(rows)
    # The collator pads as the loaders do; a DataLoader here would draw from the global RNG and shift dropout.
    collate = data_lib.PaddingCollator(tokenizer)
    cached: list[torch.Tensor | None] = [None for _ in rows]
    classifier.eval()
    for start in tqdm(
        range(0, len(rows), batch_size), desc="caching frozen prefix", leave=False, disable=bar_disabled(progress)
    ):
        chunk = order[start : start + batch_size]
        batch = collate([rows[index] for index in chunk])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast(device, dtype):
            output = classifier.frozen_output(ids, mask, depth).float().cpu()
        for position, index in enumerate(chunk):
            length = len(rows[index]["input_ids"])
            state = output[position] if output.dim() == 2 else output[position, :length]
            cached[index] = state.clone()
    return cached


def prepare(
    cfg, classifier: SentimentClassifier, encoded: dict[str, list[dict]], weights, tokenizer, device, dtype
) -> FrozenPrefix:
    method = methods.of(cfg)
    depth = method.frozen_depth(classifier)
    # A linear probe reads fixed features: the frozen encoder's pooled vectors, computed once per review.
    mode = "cache" if method.caches_whole_encoder else cfg.trainer.frozen_prefix
    if depth is None or mode == "live":
        return FrozenPrefix("live", encoded)
    if method.cache_refusal:  # virtual tokens change the sequence the layers see: nothing below can be reused
        raise UserError(
            f"config trainer.frozen_prefix: '{mode}' cannot run under method={method.name}: {method.cache_refusal}; "
            "use trainer.frozen_prefix=live"
        )
    check_frozen_prefix(classifier, mode, depth)  # a family it would be wrong for: refused
    frozen = frozen_modules(classifier, depth)
    if mode == "cache" and depth == 0:
        # Only the embeddings lie below the first adapted layer: a lookup and a LayerNorm per step cost next to
        # nothing, while their cached output is every token's hidden state for the whole data set (2.6 GB of fp32
        # for the default draw's 6,600 reviews at 256 tokens on MiniLM; measured: 5.5 GB peak against 3.3-3.6 GB
        # for the methods without a cache). 'eval' runs them without dropout each step: the same numbers.
        log.info("frozen prefix: only the embeddings are frozen below the first adapted layer; run each step "
                 "without dropout ('eval', the numbers of 'cache') rather than held for every token")  # fmt: skip
        mode = "eval"
    if mode == "eval":
        return FrozenPrefix("eval", encoded, frozen)
    started = time.perf_counter()
    classifier.cached_depth = depth
    n_layers = len(classifier.layers())

    def cached_rows(name: str) -> tuple[list[dict], bool]:
        states, was_reused = memo.FROZEN_PREFIXES.get(
            memo_key(cfg, weights, depth, n_layers, dtype, encoded[name]),
            lambda: cache_frozen_prefix(
                classifier, encoded[name], depth, tokenizer, cfg.trainer.eval_batch_size, device, dtype,
                cfg.trainer.progress,
            ),
        )  # fmt: skip
        return [{**row, "prefix": state} for row, state in zip(encoded[name], states, strict=True)], was_reused

    rows, reused = dict(encoded), []
    early = [name for name in data_lib.SPLITS if name != "test"]  # the test split's cache waits for the test pass
    for name in early:
        rows[name], was_reused = cached_rows(name)
        reused.append(was_reused)
    seconds = time.perf_counter() - started
    cached_what = "the whole encoder (pooled vectors)" if depth == n_layers else f"the input of layer {depth}"
    if all(reused):
        how = "reused from an earlier run in this process"
    else:
        shared = [name for name, was_reused in zip(early, reused, strict=True) if was_reused]
        how = f"computed in {seconds:.1f} s" + (f" ({', '.join(shared)} reused from an earlier run)" if shared else "")
    log.info("frozen prefix: %s of %d, %s; the test split's when it is tested", cached_what, n_layers, how)
    return FrozenPrefix("cache", rows, frozen, seconds, {"test": lambda: cached_rows("test")[0]})
