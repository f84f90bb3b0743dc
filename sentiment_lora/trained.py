"""A classifier under its fine-tuning method: attached, counted by group, saved into a run directory and rebuilt
from one. The method (sentiment_lora/methods/) decides what trains, how its parameters group, which tensors are
kept and how they are read back; this module does what is the same for every method."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import peft
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sentiment_lora import methods
from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import ENCODER_FILE, HEAD_FILE, Method
from sentiment_lora.model import SentimentClassifier, build_classifier, classifier_of, load_tokenizer, plain_state
from sentiment_lora.rundir.files import new_file_mode
from sentiment_lora.rundir.record import METRICS_FILE, read_metrics
from sentiment_lora.runtime import DTYPES
from sentiment_lora.sources import resolve_weights


def attach_method(classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
    """The classifier set up for cfg.method.name: what trains is requires_grad, the rest frozen."""
    return methods.of(cfg).attach(classifier, cfg, total_steps)


def count_params(wrapped: nn.Module, method: Method | None = None) -> dict[str, object]:
    """Exact counts from named_parameters (not PEFT's printout: some versions double-count saved modules), each
    trainable parameter in the group its method names, else head or encoder. method=None: the method whose groups
    claim the model's trainable parameters (a model built outside a run), else the default."""
    method = method or _claiming(wrapped)
    groups = {**dict.fromkeys(method.groups, 0), "head": 0, "encoder": 0}
    total = trainable = 0
    for name, parameter in wrapped.named_parameters():
        count = parameter.numel()
        total += count
        if not parameter.requires_grad:
            continue
        trainable += count
        group = method.group_of(name) or ("head" if ".head." in f".{name}" else "encoder")
        groups[group] = groups.get(group, 0) + count
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total, "by_group": groups}


def _claiming(wrapped: nn.Module) -> Method:
    trainable = [name for name, parameter in wrapped.named_parameters() if parameter.requires_grad]
    for method in methods.all_methods():
        if any(method.group_of(name) for name in trainable):
            return method
    return methods.get(methods.DEFAULT)


def save_trained(
    wrapped: nn.Module, run_dir: Path, encoder_state: dict[str, torch.Tensor] | None, method: Method | None = None
) -> None:
    """What reloads the trained classifier: the method's own tensors (method.save), the head's base weights, and
    of the encoder what its source cannot give back.

    encoder_state is the random-init encoder captured before the method was attached (None for pretrained weights,
    which are reloaded from their source instead); a method that saves the whole encoder writes it in its place.
    Written into a temporary folder in the run directory and renamed into place: a full disk or a kill leaves no
    half-written weights under the final names.
    """
    method = method or methods.get(methods.DEFAULT)
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".saving.", suffix=".tmp"))
    try:
        method.save(wrapped, staging)
        head = classifier_of(wrapped).head
        head = head.base_layer if isinstance(head, peft.tuners.tuners_utils.BaseTunerLayer) else head
        save_file(plain_state(head), str(staging / HEAD_FILE))
        if encoder_state is not None and not (staging / ENCODER_FILE).exists():  # full saved its trained encoder
            save_file(encoder_state, str(staging / ENCODER_FILE))
        # safetensors (0.8) writes through a temporary file created 0o600 and renamed into place, and mkdtemp makes
        # a 0o700 folder (safetensors/safetensors#782): give every file the umask's mode, as files.atomic_target
        # does, before anything gets its final name.
        file_mode = new_file_mode()
        for path in staging.rglob("*"):
            os.chmod(path, (file_mode | (file_mode & 0o444) >> 2) if path.is_dir() else file_mode)
        for path in sorted(staging.iterdir()):
            target = run_dir / path.name
            if target.is_dir():  # a retried run's leftovers (a completed run is never rewritten: rundir/claim.py)
                shutil.rmtree(target)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Trained(NamedTuple):
    model: nn.Module  # a PeftModel, or the SentimentClassifier itself for a method that trains in place
    tokenizer: object
    # The run's autocast dtype (None: fp32), from metrics.json's `precision`. Evaluate in it: a bf16 run evaluated
    # in fp32 gives other probabilities (by ~1e-4 on the tiny test model) than its test_predictions.csv.
    dtype: torch.dtype | None


def run_dtype(run_dir: Path) -> torch.dtype | None:
    """The autocast dtype a completed run trained and tested in."""
    path = Path(run_dir) / METRICS_FILE
    try:
        precision = read_metrics(run_dir).get("precision")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; the run did not complete, so its precision is unknown") from None
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: cannot read the run's precision ({err})") from None
    if precision not in DTYPES:
        raise UserError(f"{path}: precision is {precision!r}, expected one of {', '.join(DTYPES)}")
    return DTYPES[precision]


def load_trained(model_cfg, run_dir: Path, method: Method | str | None = None) -> Trained:
    """Rebuild a completed run's classifier from its run directory (safetensors only), its tokenizer, and the
    autocast dtype to evaluate it in."""
    method = methods.get(method or methods.DEFAULT) if not isinstance(method, Method) else method
    run_dir = Path(run_dir)
    dtype = run_dtype(run_dir)
    weights = resolve_weights(model_cfg)  # None for a random-init model, whose encoder.safetensors is its init
    classifier = build_classifier(model_cfg, weights)
    if (run_dir / ENCODER_FILE).exists():
        classifier.encoder.load_state_dict(load_file(str(run_dir / ENCODER_FILE)))
    classifier.head.load_state_dict(load_file(str(run_dir / HEAD_FILE)))
    model = method.reload(classifier, run_dir)
    model.eval()
    return Trained(model, load_tokenizer(model_cfg, weights), dtype)
