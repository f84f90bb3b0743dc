"""The folders `export --format` writes from a run's merged model, and how each one is loaded and scored.

- `transformers` (the default): the encoder as a transformers model, the head beside it (head.safetensors) and a
  dozen lines that pool and score (LOAD_SNIPPET).
- `sentence-transformers`: a folder of that library, Transformer -> Pooling -> Dense(hidden, 1) with a sigmoid,
  so that `SentenceTransformer(folder).encode(texts)` returns the probabilities; built and saved by the library.
- `onnx`: model.onnx, encoder + pooling + head + sigmoid in one graph (torch.onnx.export, the dynamo exporter),
  from int64 `input_ids` and `attention_mask` to `probability`, beside the tokenizer; run by onnxruntime.

Every format scores in fp32 and truncates as its tokenizer does (`truncation=True`: the first max_length tokens).
Each `probabilities(folder, texts)` here loads the folder as the format's snippet does (the snippets are in
docs/export.md, where a test runs them), so export can check the folder before it appears.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sentiment_lora.errors import UserError
from sentiment_lora.model import plain_state

CLASSIFIER_FILE = "classifier.json"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18  # what onnxruntime releases of the last years all run

# ---- the lines that load each format (docs/export.md shows them; tests run them against exports) ----

# The lines docs/export.md shows and its test executes (a test keeps the two equal).
LOAD_SNIPPET = """import json

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "exported"  # the folder sentiment_lora.export wrote
spec = json.load(open(f"{folder}/classifier.json"))
tokenizer = AutoTokenizer.from_pretrained(folder)
encoder = AutoModel.from_pretrained(folder).eval()
head = load_file(f"{folder}/head.safetensors")


def positive_probability(text: str) -> float:
    batch = tokenizer(text, truncation=True, max_length=spec["max_length"], return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1) if spec["pooling"] == "mean" else hidden[:, 0]
        return torch.sigmoid(torch.nn.functional.linear(pooled, head["weight"], head["bias"])).item()


print(positive_probability("A wonderful, moving film."))
"""

SENTENCE_TRANSFORMERS_SNIPPET = """from sentence_transformers import SentenceTransformer

folder = "exported"  # the folder `sentiment_lora.export --format sentence-transformers` wrote
texts = ["A wonderful, moving film.", "Dull, and far too long."]
probabilities = SentenceTransformer(folder).encode(texts)[:, 0]  # shape (n, 1): one output, the sigmoid's
print(probabilities)
"""

ONNX_SNIPPET = """import onnxruntime
from transformers import AutoTokenizer

folder = "exported"  # the folder `sentiment_lora.export --format onnx` wrote
texts = ["A wonderful, moving film.", "Dull, and far too long."]
tokenizer, session = AutoTokenizer.from_pretrained(folder), onnxruntime.InferenceSession(f"{folder}/model.onnx")
batch = tokenizer(texts, padding=True, truncation=True, return_token_type_ids=False, return_tensors="np")
probabilities = session.run(["probability"], dict(batch))[0]
print(probabilities)
"""


# ---- transformers: the encoder, head.safetensors and the snippet's pooling ----


def write_transformers(merged, tokenizer, folder: Path, spec: dict) -> None:
    merged.encoder.save_pretrained(str(folder), safe_serialization=True)
    save_file(plain_state(merged.head), str(folder / "head.safetensors"))
    tokenizer.save_pretrained(str(folder))


def transformers_probabilities(folder: Path, texts: list[str]) -> np.ndarray:
    """Scores as LOAD_SNIPPET computes them (fp32, head truncation), one text at a time."""
    from transformers import AutoModel, AutoTokenizer

    spec = json.loads((folder / CLASSIFIER_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).eval()
    head = load_file(str(folder / "head.safetensors"))
    probs = []
    for text in texts:
        batch = tokenizer(text, truncation=True, max_length=spec["max_length"], return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1) if spec["pooling"] == "mean" else hidden[:, 0]
            probs.append(torch.sigmoid(torch.nn.functional.linear(pooled, head["weight"], head["bias"])).item())
    return np.array(probs)


# ---- sentence-transformers: the library's own modules, saved by the library ----


def write_sentence_transformers(merged, tokenizer, folder: Path, spec: dict) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    hidden = merged.head.in_features
    with tempfile.TemporaryDirectory() as encoder_dir:  # the library's Transformer loads from a folder
        merged.encoder.save_pretrained(encoder_dir, safe_serialization=True)
        tokenizer.save_pretrained(encoder_dir)
        transformer = Transformer(encoder_dir, max_seq_length=spec["max_length"])
        pooling = Pooling(hidden, pooling_mode=spec["pooling"])  # "mean" and "cls" are the library's names too
        head = Dense(hidden, 1, activation_function=torch.nn.Sigmoid())
        head.linear.load_state_dict(plain_state(merged.head))
        SentenceTransformer(modules=[transformer, pooling, head], device="cpu").save(str(folder))


def sentence_transformers_probabilities(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts)[:, 0]


# ---- onnx: one graph from token ids to the probability ----


class ProbabilityGraph(torch.nn.Module):
    """The merged classifier with its sigmoid: what model.onnx computes."""

    def __init__(self, merged):
        super().__init__()
        self.classifier = merged

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(input_ids, attention_mask))


def export_onnx(merged, tokenizer, path: Path) -> None:
    """model.onnx through torch's dynamo exporter (the one torch develops; the TorchScript one is deprecated), with
    dynamic batch and sequence axes, the weights inside the file (external_data=False: one file, < 2 GB)."""
    graph = ProbabilityGraph(merged).eval()
    # Two reviews of other lengths: a batch of one, or one length, would fix that axis in the graph.
    example = tokenizer(["a wonderful film, loved it", "dull"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines, about ops this graph lacks
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes, about torch's internals
            torch.onnx.export(
                graph,
                (example["input_ids"], example["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["probability"],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)


def write_onnx(merged, tokenizer, folder: Path, spec: dict) -> None:
    export_onnx(merged.eval(), tokenizer, folder / ONNX_FILE)
    # The saved tokenizer truncates at max_length by itself (model_max_length), so `truncation=True` is enough.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = spec["max_length"]
    tokenizer.save_pretrained(str(folder))


def onnx_probabilities(folder: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    batch = tokenizer(texts, padding=True, truncation=True, return_token_type_ids=False, return_tensors="np")
    return session.run(["probability"], dict(batch))[0]


# ---- the table of formats ----


@dataclass(frozen=True)
class ExportFormat:
    name: str
    library_name: str  # the model card's library_name: the library that loads the folder
    tags: tuple[str, ...]
    needs: tuple[str, ...]  # modules the format imports (the `export` extra installs them)
    snippet: str
    files: tuple[str, ...]  # the model card's lines about the folder's files ({merged}: export.encoder_note)
    write: Callable[..., None]  # (merged classifier, tokenizer, folder, classifier spec)
    probabilities: Callable[[Path, list[str]], np.ndarray]


TOKENIZER_LINE = "- tokenizer files (`AutoTokenizer`)"
CLASSIFIER_LINE = f"- `{CLASSIFIER_FILE}`: pooling, max_length, truncation, threshold, the run's precision"

FORMATS = {
    "transformers": ExportFormat(
        "transformers", "transformers", ("transformers",), (), LOAD_SNIPPET,
        ("- `config.json`, `model.safetensors`: the encoder{merged} (transformers `AutoModel`)",
         "- `head.safetensors`: the head, `weight` (1 x hidden) and `bias` (1)", CLASSIFIER_LINE, TOKENIZER_LINE),
        write_transformers, transformers_probabilities,
    ),
    "sentence-transformers": ExportFormat(
        "sentence-transformers", "sentence-transformers", ("sentence-transformers", "transformers"),
        ("sentence_transformers",), SENTENCE_TRANSFORMERS_SNIPPET,
        ("- `modules.json`: Transformer -> Pooling -> Dense; `config.json`, `model.safetensors`: the "
         "encoder{merged}", "- `1_Pooling/`: the run's pooling; `2_Dense/`: the head, Linear(hidden, 1) with a sigmoid",
         CLASSIFIER_LINE, TOKENIZER_LINE),
        write_sentence_transformers, sentence_transformers_probabilities,
    ),
    "onnx": ExportFormat(
        "onnx", "onnx", ("onnx",), ("onnx", "onnxscript", "onnxruntime"), ONNX_SNIPPET,
        (f"- `{ONNX_FILE}`: encoder{{merged}}, pooling, head and sigmoid, opset {ONNX_OPSET}, fp32; inputs "
         "`input_ids` and `attention_mask` (int64, batch x sequence), output `probability` (batch)",
         CLASSIFIER_LINE, "- tokenizer files (`AutoTokenizer`; model_max_length is the run's max_length)"),
        write_onnx, onnx_probabilities,
    ),
}  # fmt: skip
DEFAULT_FORMAT = "transformers"


def check_installed(export_format: ExportFormat) -> None:
    """A format whose library is missing is one line naming it, before the run's model loads."""
    import importlib.util

    for module in export_format.needs:
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"--format {export_format.name}: needs the {module} package, which is not installed; "
                "pip install 'sentiment-lora[export]'"
            )
