"""precision=auto: bf16 autocast where the CPU has native bf16 (avx512_bf16 or amx_bf16), fp32 elsewhere (AVX2, or
AVX512 without bf16, where oneDNN would emulate it); metrics.json records the choice and why."""

from __future__ import annotations

import json

import pytest
import torch

from sentiment_lora import runtime
from sentiment_lora.run import train

from .conftest import TINY_FAST, compose_config, write_reviews

CPU = torch.device("cpu")
AVX2 = {"sse4_2", "avx", "avx2", "fma"}
# The real check, taken before tests/conftest.py's SENTIMENT_LORA_TEST_AUTO_BF16 fixture replaces it: these tests
# give it the flags themselves.
FLAG_CHECK = runtime.cpu_supports_bf16
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # Skylake/Cascade Lake: no bf16 instructions


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(AVX2, None), (AVX512, None), (AVX512 | {"avx512_bf16"}, torch.bfloat16),
     (AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, torch.bfloat16)],
    ids=["avx2", "avx512-no-bf16", "avx512-bf16", "amx"],
)  # fmt: skip
def test_auto_picks_bf16_only_where_the_cpu_flags_say_native_bf16(monkeypatch, flags, expected):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(runtime, "cpu_supports_bf16", FLAG_CHECK)
    assert runtime.pick_dtype("auto", CPU) == expected
    reason = runtime.precision_reason("auto", CPU)
    assert ("has native bf16" in reason) == (expected is not None)
    assert runtime.pick_dtype("fp32", CPU) is None and runtime.pick_dtype("bf16", CPU) == torch.bfloat16


@pytest.mark.parametrize(
    ("variable", "cap", "expected"),
    [("ONEDNN_MAX_CPU_ISA", "avx2", None), ("DNNL_MAX_CPU_ISA", "AVX512_CORE", None),
     ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", torch.bfloat16), ("ONEDNN_MAX_CPU_ISA", "ALL", torch.bfloat16)],
)  # fmt: skip
def test_a_onednn_isa_cap_below_bf16_makes_auto_choose_fp32_on_a_bf16_cpu(monkeypatch, variable, cap, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AVX512 | {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(runtime, "cpu_supports_bf16", FLAG_CHECK)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, cap)
    assert runtime.pick_dtype("auto", CPU) == expected
    reason = runtime.precision_reason("auto", CPU)
    assert ("capped at" in reason) == (expected is None), reason


def test_without_cpu_flags_auto_asks_onednn(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: None)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", FLAG_CHECK)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert runtime.pick_dtype("auto", CPU) is None


@pytest.mark.parametrize("native", [True, False])
def test_metrics_json_records_the_precision_and_why(monkeypatch, tmp_path, native):
    flags = AVX512 | {"avx512_bf16"} if native else AVX2
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native)  # as tests/conftest.py forces it
    csv = write_reviews(tmp_path / "reviews.csv")
    cfg = compose_config([*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={csv}", "save_adapter=false"])
    (tmp_path / "run").mkdir()
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["precision"] == ("bf16" if native else "fp32")
    assert record["precision_reason"].startswith("auto: the CPU " + ("has" if native else "lacks"))
    assert record["precision_reason"].endswith("(avx512_bf16)" if native else "emulated and slower")
