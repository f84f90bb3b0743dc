"""`python -m sentiment_lora.export RUN_DIR OUT_DIR [--format F] [--adapter] [--force]`: a completed run as a
folder that another library loads, without this package.

The LoRA or IA3 adapter is merged into the encoder's weights (method=linear_probe, bitfit and full save the encoder
as they left it), and the folder holds the classifier in one of three formats (export/formats.py): `transformers`
(the default: config.json + model.safetensors, the head in head.safetensors), `sentence-transformers`
(SentenceTransformer(folder).encode gives the probabilities) or `onnx` (model.onnx for onnxruntime). Every format
adds classifier.json (pooling, max_length, truncation, threshold, method), the tokenizer, a model card (README.md,
with Hub metadata, naming the method) and, with --adapter, the unmerged adapter (lora and ia3 only). docs/export.md
shows the lines that load and score each format; export checks those steps on probe reviews against the unmerged
model before the folder appears. Everything is written into a temporary folder beside OUT_DIR and renamed into
place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sentiment_lora import __version__, locks, methods
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError, exit_with
from sentiment_lora.export.card import PROBE_REVIEWS, THRESHOLD, method_of, model_card
from sentiment_lora.export.formats import (  # noqa: F401  (LOAD_SNIPPET: export's lines, as tests read them)
    CLASSIFIER_FILE,
    DEFAULT_FORMAT,
    FORMATS,
    LOAD_SNIPPET,
    ExportFormat,
    check_installed,
)
from sentiment_lora.loop import predict
from sentiment_lora.rundir.completed import Run, load_model, open_run, run_holding
from sentiment_lora.rundir.files import new_file_mode
from sentiment_lora.rundir.record import RUN_FORMAT
from sentiment_lora.signals import one_line_faults

# classifier.json's mark of a folder this command wrote: --force replaces such a folder and nothing else.
WRITTEN_BY = "sentiment_lora.export"
# The export must score as the unmerged run does; fp32 merging moves probabilities by ~1e-7.
MERGE_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sentiment_lora.export",
        description="Write a completed run as a folder another library loads: the encoder with LoRA merged and "
        "the head (as transformers, sentence-transformers or ONNX), classifier.json, the tokenizer and a model card.",
    )
    parser.add_argument("run_dir", type=Path, help="a completed run directory")
    parser.add_argument("out_dir", type=Path, help="the folder to write (must not exist or be empty)")
    parser.add_argument(
        "--format",
        dest="export_format",
        choices=list(FORMATS),
        default=DEFAULT_FORMAT,
        help="transformers (default): AutoModel + head.safetensors; sentence-transformers: SentenceTransformer("
        "folder).encode gives the probabilities; onnx: model.onnx for onnxruntime",
    )
    parser.add_argument("--adapter", action="store_true", help="also write the unmerged PEFT adapter in adapter/")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds a previous export")
    return parser.parse_args(argv)


# ---- the model card ----


# ---- writing the folder ----


def classifier_spec(run: Run, export_format: str = DEFAULT_FORMAT) -> dict:
    cfg = run.cfg
    return {
        "format": 1,
        "written_by": WRITTEN_BY,
        "export_format": export_format,
        "pooling": cfg.model.pooling,
        "max_length": cfg.trainer.max_length,
        "truncation": cfg.data.truncation,
        "head_fraction": cfg.data.head_fraction,
        "strip_html": cfg.data.strip_html,
        "threshold": THRESHOLD,
        "labels": {"0": "negative", "1": "positive"},
        "precision": run.metrics.get("precision"),
        "method": cfg.method.name,
        "sentiment_lora_version": __version__,
        "run_format": run.metrics.get("run_format", RUN_FORMAT),
    }


def harness_probabilities(trained, rows: list[dict]) -> np.ndarray:
    """The unmerged model's probabilities in fp32 on CPU, as the plain lines compute them."""
    return predict(trained.model, rows, trained.tokenizer, 16, torch.device("cpu"), None)


def write_export(
    run: Run, trained, folder: Path, with_adapter: bool, out_name: str, export_format: ExportFormat | None = None
) -> float:
    """Everything into `folder` (to be renamed `out_name`); returns the largest probe difference between the
    export, loaded as its format's lines load it, and the run's model (`trained`, loaded from the run)."""
    cfg = run.cfg
    export_format = export_format or FORMATS[DEFAULT_FORMAT]
    # Head truncation, as every format's tokenizer does: the probe reviews are short, so every truncation agrees.
    probes = data_lib.encode(
        pd.DataFrame({"text": PROBE_REVIEWS, "label": 0}), trained.tokenizer, cfg.trainer.max_length
    )
    before = harness_probabilities(trained, probes)
    if with_adapter:
        shutil.copytree(run.dir / "adapter", folder / "adapter")
        shutil.copy2(run.dir / "head.safetensors", folder / "adapter" / "head.safetensors")
    # LoRA and IA3 merge into the encoder's weights; the other methods' classifier is saved as it is.
    merged = methods.get(cfg.method.name).merged(trained.model)
    merged = merged.eval()
    spec = classifier_spec(run, export_format.name)
    export_format.write(merged, trained.tokenizer, folder, spec)
    (folder / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    after = export_format.probabilities(folder, PROBE_REVIEWS)
    diff = float(np.abs(np.asarray(after, dtype=np.float64) - before).max())
    if not diff <= MERGE_TOLERANCE:  # NaN too
        raise RuntimeError(f"the {export_format.name} export scores {diff:.2e} away from the run's model on a probe")
    (folder / "README.md").write_text(model_card(run, out_name, diff, with_adapter, export_format))
    # The files this export wrote, classifier.json itself included: all that a later --force may replace.
    spec["files"] = sorted(folder_files(folder) | {CLASSIFIER_FILE})
    (folder / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return diff


def folder_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir()}


def _give_modes(folder: Path) -> None:
    """mkdtemp and safetensors create 0o700 folders and 0o600 files: give the umask's usual modes."""
    file_mode = new_file_mode()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0o755 under umask 022
    os.chmod(folder, dir_mode)
    for path in folder.rglob("*"):
        os.chmod(path, dir_mode if path.is_dir() else file_mode)


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an export: its classifier.json is this command's (older exports, without the
    written_by mark, have the same format and version fields), and no run lies anywhere beneath it."""
    try:
        spec = json.loads((folder / CLASSIFIER_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(spec, dict):
        return False
    marked = spec.get("written_by") == WRITTEN_BY or {"format", "sentiment_lora_version", "threshold"} <= set(spec)
    return marked and not any(folder.rglob("metrics.json"))


def files_no_export_wrote(folder: Path) -> list[str] | None:
    """The files of a previous export's folder that are not in its classifier.json's list of the files it wrote
    (a user's notes, say), or None for an export written before exports listed their files."""
    listed = json.loads((folder / CLASSIFIER_FILE).read_text()).get("files")
    return sorted(folder_files(folder) - set(listed)) if isinstance(listed, list) else None


def check_out_dir(out_dir: Path, run: Run, force: bool) -> None:
    """OUT_DIR must be new, empty, or (with --force) a previous export: never the run, a folder holding it (its
    siblings with it) or one inside it, and never a folder holding a file that no export wrote, which --force
    would delete."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    out, run_dir = out_dir.resolve(), run.dir.resolve()  # symlinks resolved: a link to the run is the run
    if out == run_dir or out in run_dir.parents:
        raise UserError(f"{out_dir}: holds the run directory {run.dir}; export to a folder of its own")
    holder = run_holding(out_dir, run)
    if holder is not None:
        raise UserError(f"{out_dir}: is inside the run directory {holder}; export elsewhere")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir}: exists and is not empty; pass --force to replace a previous export")
        if not is_export(out_dir):
            raise UserError(
                f"{out_dir}: is not a previous export (no {CLASSIFIER_FILE} written by sentiment_lora.export), so "
                "--force leaves it alone; choose another folder, or remove it yourself"
            )
        foreign = files_no_export_wrote(out_dir)
        if foreign is None:
            raise UserError(
                f"{out_dir}: a previous export that does not list the files it wrote (an older sentiment-lora's), so "
                "--force cannot tell them from yours; remove it yourself, or choose another folder"
            )
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise UserError(
                f"{out_dir}: holds {foreign[0]}{more}, which no export wrote, so --force leaves the folder alone; "
                "move those files aside, or choose another folder"
            )


def export(
    run_dir: Path, out_dir: Path, with_adapter: bool = False, force: bool = False, export_format: str = DEFAULT_FORMAT
) -> Path:
    """Write the run's export to out_dir, all or nothing: a failure leaves no folder behind."""
    out_dir = Path(out_dir).expanduser()
    chosen = FORMATS[export_format]
    check_installed(chosen)
    run = open_run(run_dir)
    method = method_of(run)
    if method.merge_refusal:
        raise UserError(f"export: run {run.dir} trained with method={method.name}, which {method.merge_refusal}")
    if with_adapter and not method.has_adapter:
        with_adapters = ", ".join(item.name for item in methods.all_methods() if item.has_adapter)
        raise UserError(
            f"--adapter: run {run.dir} trained with method={method.name}, which has no adapter (only "
            f"{with_adapters} have one); export without --adapter"
        )
    check_out_dir(out_dir, run, force)
    trained = load_model(run)  # a damaged run is refused before any folder is made
    missing = [folder for folder in (out_dir.parent, *out_dir.parent.parents) if not folder.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        # One export into a folder at a time; checked again under the lock, as another export may just have ended.
        with locks.holding(out_dir, "export folder"):
            check_out_dir(out_dir, run, force)
            _write_into(out_dir, run, trained, with_adapter, chosen)
        done = True
    finally:
        if not done:
            for folder in missing:  # the parents this export made, innermost first, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return out_dir


def _write_into(out_dir: Path, run: Run, trained, with_adapter: bool, chosen: ExportFormat) -> None:
    """The export into a temporary folder beside out_dir, renamed into place: all or nothing."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    old = None
    try:
        write_export(run, trained, tmp, with_adapter, out_dir.name, chosen)
        _give_modes(tmp)
        if out_dir.exists():  # empty, or --force: set it aside, rename the new folder in, then remove it
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.replace(out_dir, old / "replaced")
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old is not None:
                os.replace(old / "replaced", out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars say nothing about a folder this size
    stopped = "export interrupted ({signal}); " + f"nothing was written: {args.out_dir} was left as it was"
    try:
        with one_line_faults(stopped, args.out_dir):
            out = export(args.run_dir, args.out_dir, args.adapter, args.force, args.export_format)
    except UserError as err:
        exit_with(err)
    print(f"exported {args.run_dir} to {out} ({args.export_format})")


if __name__ == "__main__":
    main()
