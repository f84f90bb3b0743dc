"""What a training step spends outside matrix products, removed: dropout masks drawn cheaply, frozen weights held
in the compute dtype.

Dropout. torch's CPU dropout draws one Bernoulli sample per element (`aten::bernoulli_`, one generator call per
element, serial): on an AMX or AVX512-BF16 CPU that cost as much as all the step's bf16 matrix products. `MaskDropout`
draws 64 random bits per generator call and reads them as four 16-bit lanes, one per element: an element is dropped
when its lane falls below p·2^16, so the rate is the configured p rounded to a multiple of 2^-16 (0.1 → 0.100006).
The bits come from torch's own global generator, so what seeds and checkpoints dropout today seeds and checkpoints
these masks: the same config and seed give the same masks, other seeds (replicates) other masks, and the members of
a population, whose rows are drawn in one call over the stacked batch, independent masks. Hand-written because
torch has no dropout that takes its mask from fewer random bits, and the bool mask it keeps for the backward pass is
a quarter of an fp32 noise tensor's memory.

Frozen weights. Under autocast every Linear casts its fp32 weight to bf16 on every call, and autocast's cast cache
keeps only casts of parameters that require a gradient, so the frozen weights (all but the adapters) were cast anew
in every forward. `frozen_weights_in` casts them once; autocast would round them the same way, so the numbers are
the same bit for bit. Trainable parameters and their optimizer state stay fp32. PEFT's cast of each LoRA input to
the adapter's fp32, which autocast undoes for the product, is switched off (`lora_inputs_as_they_come`).

Attention that trains, in fp32. On the CPU, SDPA's fused (flash) kernel runs its backward pass more than twice as
slowly in bf16 as in fp32 (MiniLM's shapes, batch 16 x 256 tokens: 73 against 35 ms a layer; bench/README.md), and
autocast runs SDPA in bf16. `trained_attention_in_fp32` registers an attention function with transformers'
AttentionInterface (the library's way to add one) that computes attention in fp32 where a gradient flows through it
on the CPU under bf16 autocast, and leaves every other call (evaluation, frozen layers, GPUs) to transformers' SDPA.
The products around it stay bf16; attention itself is computed more precisely, so bf16 runs' numbers differ from
those taken before this lever (same config and seed still give the same numbers).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

_LANES = 4  # 16-bit lanes per 64-bit draw
_LANE_VALUES = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True (kept) with probability 1 - p (p rounded to a multiple of 2^-16)."""
    count = shape.numel()
    words = torch.empty((count + _LANES - 1) // _LANES, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # the whole 64-bit range: every lane uniform over its 2^16 values
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes >= round(p * _LANE_VALUES) - _LANE_VALUES // 2


class _Masked(torch.autograd.Function):
    """x where kept, scaled by 1 / (1 - p); the backward pass applies the same mask to the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """functional.dropout's meaning, with the mask drawn by `keep_mask`; nothing is drawn when p is 0."""
    if not training or p == 0 or x.numel() == 0:
        return x
    if p >= 1:
        return x * 0
    return _Masked.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class MaskDropout(nn.Dropout):
    """nn.Dropout (same p, same place in the model, same `p` attribute the attention code reads) with cheap masks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_cheap_dropout(model: nn.Module) -> int:
    """Replace every nn.Dropout in `model` (the encoder's, PEFT's LoRA dropout, the head's) by a MaskDropout of the
    same rate; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskDropout(child.p))
                replaced += 1
    return replaced


@torch.no_grad()
def frozen_weights_in(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Cast the frozen weights and biases of every Linear to `dtype` (the autocast dtype; None: leave fp32);
    returns how many tensors were cast. Only Linears: autocast runs their products in `dtype` anyway, while
    embeddings and norms run in fp32 under autocast and keep their fp32 parameters."""
    if dtype is None:
        return 0
    # A PEFT layer other than plain LoRA may read its base weight outside a product that autocast casts (DoRA's
    # weight norm, orthogonal rotations...): there a bf16 copy would change the numbers, and a run's test predictions
    # would differ from what predict computes on the saved fp32 weights. Such base layers keep fp32.
    exact_only = {id(module.base_layer) for module in model.modules() if _reads_base_weight(module)}
    cast = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in exact_only:
            for parameter in (module.weight, module.bias):
                if parameter is not None and not parameter.requires_grad and parameter.dtype != dtype:
                    parameter.data = parameter.data.to(dtype)
                    cast += 1
    return cast


def _plain_lora(module: nn.Module) -> bool:
    return isinstance(module, LoraLayer) and not any(module.use_dora.values())


def _reads_base_weight(module: nn.Module) -> bool:
    """A PEFT tuner layer (it wraps `base_layer`) whose forward may use the base weight beyond base_layer(x)."""
    return isinstance(getattr(module, "base_layer", None), nn.Linear) and not _plain_lora(module)


def lora_inputs_as_they_come(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Under autocast, stop PEFT casting each LoRA input to the adapter's fp32 (PEFT's own switch,
    `cast_input_dtype_enabled`): autocast casts it back to `dtype` for lora_A's product anyway, so the round trip
    (two copies of a bf16 activation, and LoRA dropout over fp32) bought nothing. Returns the layers switched."""
    if dtype is None:
        return 0
    layers = [module for module in model.modules() if _plain_lora(module)]  # DoRA's path keeps PEFT's casts
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


TRAINED_ATTENTION_FP32 = "sdpa_trained_fp32"


def _sdpa_trained_fp32(module, query, key, value, attention_mask, **kwargs):
    trains = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if not trains or query.device.type != "cpu" or query.dtype != torch.bfloat16:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        output, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return output.to(query.dtype), weights


AttentionInterface.register(TRAINED_ATTENTION_FP32, _sdpa_trained_fp32)
ALL_MASK_ATTENTION_FUNCTIONS.register(TRAINED_ATTENTION_FP32, sdpa_mask)  # the same masks as SDPA's


def trained_attention_in_fp32(encoder: nn.Module, dtype: torch.dtype | None) -> bool:
    """Switch an SDPA encoder to `_sdpa_trained_fp32` under bf16 (eager encoders, such as MPNet's, keep theirs)."""
    config = getattr(encoder, "config", None)
    if dtype != torch.bfloat16 or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    config._attn_implementation = TRAINED_ATTENTION_FP32
    return True


def prepare_for_steps(model: nn.Module, encoder: nn.Module, dtype: torch.dtype | None) -> None:
    """The above, on a model whose trainable part is set (after attach_method). Only the encoder's weights are cast:
    the head's frozen base weights (LoRA on the head) are saved with the run, in fp32."""
    use_cheap_dropout(model)
    frozen_weights_in(encoder, dtype)
    lora_inputs_as_they_come(model, dtype)
    trained_attention_in_fp32(encoder, dtype)
