"""End-of-epoch checkpoints, so a killed run resumes from its last completed epoch and ends with the metrics of
an uninterrupted run.

One safetensors file in the run directory holds every tensor a resumed epoch needs (trainable weights, the best
epoch's weights, optimizer moments, the global/CUDA/sampler random states); its metadata holds the rest as JSON
(epoch, history, the selected epoch, optimizer groups, scheduler state, a digest of the config). Safetensors,
not torch.save: loading a checkpoint never unpickles anything. Written to a temporary file and renamed, so a kill
during the write leaves the previous epoch's checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sentiment_lora import methods
from sentiment_lora.errors import UserError
from sentiment_lora.rundir.files import atomic_target
from sentiment_lora.rundir.record import config_digest

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor's name, dtype, shape and bytes: safetensors checks a file's layout, not its values."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().contiguous().cpu()
        digest.update(f"{key}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _damaged(path: Path, reason: str) -> UserError:
    return UserError(
        f"{path}: {reason}; the checkpoint is damaged: delete it to train this run from epoch 1, or use a new run "
        "directory"
    )


def read_checkpoint(path: Path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint file; one line naming the file when it is truncated, empty or altered."""
    try:
        with safe_open(str(path), framework="pt") as handle:  # one read: metadata and tensors
            meta = json.loads((handle.metadata() or {})["state"])
            loaded = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except OSError as err:
        raise _damaged(path, f"cannot read it ({err.strerror or err})") from None
    except (KeyError, ValueError, TypeError):
        raise _damaged(path, "no sentiment-lora state in its metadata") from None
    except Exception as err:  # noqa: BLE001 - safetensors' own error type (truncated, empty, bad header)
        raise _damaged(path, f"not a readable safetensors file ({str(err).strip().splitlines()[0]})") from None
    if tensors and "sha256" in meta and tensors_sha256(loaded) != meta["sha256"]:
        raise _damaged(path, "its tensors differ from the sha256 recorded in it")
    return meta, loaded


def checkpoint_digest(path: Path) -> str | None:
    """The config digest a checkpoint was written under (its metadata only)."""
    return read_checkpoint(path, tensors=False)[0].get("digest")


def _sampler_generator(batches) -> torch.Generator | None:
    """The generator that orders training batches (the shuffling DataLoader's, or its length-grouped sampler's)."""
    return getattr(batches.sampler, "generator", None) or batches.generator


class Checkpoint:
    """trainer.checkpoint turns saving and resuming on; trainer.keep_checkpoint keeps the file once the run ends."""

    def __init__(self, run_dir: Path, cfg) -> None:
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.digest = config_digest(cfg)
        self.enabled, self.keep = cfg.trainer.checkpoint, cfg.trainer.keep_checkpoint
        self.method = methods.of(cfg)

    def save(self, epoch: int, model, optimizer, scheduler, batches, history: list, best: dict, best_state: dict):
        if not self.enabled:
            return
        tensors = {f"param/{name}": p.detach() for name, p in model.named_parameters() if p.requires_grad}
        tensors |= {f"best/{name}": value for name, value in best_state.items()}
        tensors |= {f"method/{key}": value for key, value in self.method.state_tensors(model).items()}
        optimizer_state = optimizer.state_dict()
        moments = {}
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{index}/{key}"] = value
                else:
                    moments.setdefault(str(index), {})[key] = value
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors |= {f"rng/cuda/{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
        if (generator := _sampler_generator(batches)) is not None:
            tensors["rng/sampler"] = generator.get_state()
        meta = {
            "digest": self.digest,
            "epoch": epoch,
            "history": history,
            "best": best,
            "optimizer_groups": optimizer_state["param_groups"],
            "optimizer_scalars": moments,
            "scheduler": scheduler.state_dict(),
        }
        tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
        meta["sha256"] = tensors_sha256(tensors)  # checked on resume: flipped bytes would resume silently
        with atomic_target(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(meta, default=list)})

    def restore(self, model, optimizer, scheduler, batches) -> tuple[int, list, dict, dict] | None:
        """(last completed epoch, history, best, best_state) with model, optimizer, scheduler and random states
        set as they were after that epoch; None when there is no checkpoint."""
        if not self.enabled or not self.path.exists():
            return None
        meta, tensors = read_checkpoint(self.path)
        if meta.get("digest") != self.digest:
            raise UserError(
                f"{self.path} is a checkpoint of another configuration; re-run with the same overrides to resume, "
                "or use a new run directory"
            )
        device = next(model.parameters()).device
        params = {name[len("param/") :]: value for name, value in tensors.items() if name.startswith("param/")}
        model.load_state_dict({name: value.to(device) for name, value in params.items()}, strict=False)
        method_state = {
            name[len("method/") :]: value.to(device) for name, value in tensors.items() if name.startswith("method/")
        }
        self.method.restore_state(model, method_state)
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("optim/"):
                _, index, key = name.split("/", 2)
                state.setdefault(int(index), {})[key] = value.to(device)
        for index, scalars in meta["optimizer_scalars"].items():
            state.setdefault(int(index), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng/torch"])
        cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
        if "rng/sampler" in tensors:
            _sampler_generator(batches).set_state(tensors["rng/sampler"])
        best_state = {
            name[len("best/") :]: value.to(device) for name, value in tensors.items() if name.startswith("best/")
        }
        log.info("resuming from %s after epoch %d", self.path, meta["epoch"])
        return meta["epoch"], meta["history"], meta["best"], best_state

    def finish(self) -> None:
        """The run has ended (complete, or pruned): nothing is left to resume."""
        if not self.keep:
            self.path.unlink(missing_ok=True)
