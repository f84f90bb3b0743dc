"""Where and how a run computes: device, autocast precision, threads, optimizer and learning-rate schedule."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from peft.optimizers import create_loraplus_optimizer
from transformers import get_scheduler

from sentiment_lora.errors import UserError


def _adam_kwargs(cfg) -> dict:
    return {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": tuple(cfg.betas)}


def _sgd_kwargs(cfg) -> dict:
    return {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum}


# Dispatch tables for config choices; config.CHOICES lists the same names (a test keeps the two equal).
OPTIMIZERS = {
    "adamw": (torch.optim.AdamW, _adam_kwargs),
    "adam": (torch.optim.Adam, _adam_kwargs),
    "sgd": (torch.optim.SGD, _sgd_kwargs),
}
# Config name -> transformers' schedule name.
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"config trainer.device: '{requested}' requested but no CUDA device is available")
    device = torch.device(requested)
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.index >= count:
        raise UserError(f"config trainer.device: '{requested}' requested but CUDA has {count} devices")
    return device


# CPU flags of native bf16 matrix products (bench/README.md, "Precision per CPU kind": where they are missing, oneDNN
# emulates bf16 through fp32 and a bf16 step is slower than an fp32 one).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) below AVX512_CORE_BF16: with one of them
# set, oneDNN runs bf16 products without the bf16 instructions the flags list, so bf16 is emulated as on a CPU
# without them (bench/README.md measures a capped step).
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str | None:
    """The oneDNN ISA cap set in the environment, upper-cased, or None."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return None


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (avx512_bf16 or AMX) and no oneDNN ISA cap hides it. oneDNN's own
    check is not used on Linux: it also says yes on AVX512 CPUs without bf16 instructions, where bf16 is emulated;
    it is the fallback elsewhere."""
    if onednn_isa_cap() in ISA_CAPS_WITHOUT_BF16:
        return False
    flags = cpu_flags()
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
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


def precision_reason(precision: str, device: torch.device) -> str:
    """Why pick_dtype chose what it did, in words (metrics.json's precision_reason)."""
    if precision != "auto":
        return f"trainer.precision={precision}"
    if device.type == "cuda":
        has = "supports" if torch.cuda.is_bf16_supported() else "does not support"
        return f"auto: the CUDA device {has} bf16"
    if cpu_supports_bf16():
        found = sorted(flag for flag in NATIVE_BF16_FLAGS if flag in (cpu_flags() or set()))
        return f"auto: the CPU has native bf16 ({', '.join(found) or 'oneDNN says so'})"
    cap = onednn_isa_cap()
    if cap in ISA_CAPS_WITHOUT_BF16:
        return f"auto: oneDNN is capped at {cap} (ONEDNN_MAX_CPU_ISA), below its native bf16, where bf16 is emulated"
    return f"auto: the CPU lacks native bf16 ({' and '.join(NATIVE_BF16_FLAGS)}), where bf16 is emulated and slower"


# metrics.json's `precision` -> the autocast dtype (None: plain fp32).
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def make_optimizer(model: torch.nn.Module, cfg, loraplus_lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters; with a LoRA+ ratio, PEFT's LoRA+ groups for
    the adapters and one group at optimizer.lr for the rest (the head)."""
    optimizer_cls, kwargs_of = OPTIMIZERS[cfg.name]
    kwargs = kwargs_of(cfg)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if loraplus_lr_ratio is None:
        return optimizer_cls([p for _, p in trainable], **kwargs)
    # PEFT puts every 1-d parameter in its fast B group, the head's bias too, so the head is kept out of its view
    # and added as a group of its own: LoRA+ speeds up the adapters only.
    others = [p for name, p in trainable if "lora_" not in name]
    with _frozen(others):
        optimizer = create_loraplus_optimizer(
            model, optimizer_cls, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_weight_decay=cfg.weight_decay, **kwargs
        )
    if others:
        optimizer.add_param_group({"params": others})  # the optimizer's defaults: optimizer.lr and weight_decay
    return optimizer


@contextmanager
def _frozen(parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    return get_scheduler(
        SCHEDULES[cfg.scheduler],
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
