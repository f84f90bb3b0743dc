"""`python -m sentiment_lora.predict RUN_DIR [--csv FILE]`: score reviews with a completed run's model.

The run is a run directory, or the best completed trial of an Optuna study (--storage, --study). Reviews come from
a file (--csv: CSV, TSV, JSONL or Parquet, validated and HTML-stripped as training data is) or from stdin, one per
line. The output is CSV `row,text_prefix,prob,prediction` on stdout or --out. The run's own tokenizer, max_length,
truncation and pooling are used, in the run's own precision, with its length-sorted evaluation batches: the run's
test split comes out as its test_predictions.csv.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sentiment_lora.config import DEVICE
from sentiment_lora.data import labels as labels_lib
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError, exit_with
from sentiment_lora.loop import predict
from sentiment_lora.outputs import neutralised, write_csv
from sentiment_lora.rundir.completed import Run, load_model, open_run, run_holding, study_run_dir
from sentiment_lora.runtime import pick_device
from sentiment_lora.signals import one_line_faults

PREFIX_CHARS = 60
PROGRESS_MIN_BATCHES = 10  # fewer batches finish before a bar would say anything


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sentiment_lora.predict",
        description="Score reviews with a completed run's model: CSV row,text_prefix,prob,prediction "
        "(prob: probability of positive; prediction: prob >= 0.5).",
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="a completed run directory (or use --storage/--study)")
    parser.add_argument("--storage", help="Optuna storage URL of a sweep's study, e.g. sqlite:///outputs/optuna/x.db")
    parser.add_argument("--study", help="study name: predict with its best completed trial's run")
    parser.add_argument("--trial", type=int, help="with --study: this trial number instead (multi-objective studies)")
    parser.add_argument(
        "--csv",
        type=Path,
        help="reviews to score: CSV, TSV, JSONL or Parquet (by extension; compressed too); without it, stdin, one "
        "review per line",
    )
    parser.add_argument("--text-column", help="the CSV's text column (default: the run's data.text_column)")
    parser.add_argument(
        "--label-column",
        help="the CSV's label column, if any: accuracy goes to stderr (default: the run's data.label_column)",
    )
    parser.add_argument("--out", type=Path, help="write the CSV here (atomically) instead of stdout")
    parser.add_argument("--batch-size", type=int, help="default: the run's trainer.eval_batch_size")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.study is None):
        parser.error("give a run directory, or --storage URL --study NAME")
    if args.study is not None and not args.storage:
        parser.error("--study needs --storage")
    if args.trial is not None and args.study is None:
        parser.error("--trial needs --study")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def resolve_run(args: argparse.Namespace) -> Run:
    run_dir = args.run_dir if args.run_dir is not None else study_run_dir(args.storage, args.study, args.trial)
    return open_run(run_dir)


def _stdin_text(stream) -> str:
    """stdin as UTF-8 text, read as bytes: Python's own decoding would either fail with a traceback or, under a C
    locale, pass undecodable bytes on as surrogates that the tokenizer then refuses."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (a test's StringIO)
        return stream.read()
    data = buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start)  # 0-based, as `row` counts lines
        raise UserError(
            f"stdin, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); convert it first, e.g. "
            "iconv -f latin1 -t utf-8, or pass --csv FILE"
        ) from None


def read_stdin(stream, strip_html: bool) -> pd.DataFrame:
    """One review per line; blank lines are skipped, and `row` stays the line's 0-based number."""
    lines = _stdin_text(stream).splitlines()
    frame = pd.DataFrame({"text": lines}).loc[[index for index, line in enumerate(lines) if line.strip()]]
    if frame.empty:
        raise UserError("no input: stdin held no review (one per line); or pass --csv FILE")
    return data_lib.stripped(frame, "stdin", row_name="line") if strip_html else frame


def read_file(path: Path, text_column: str, label_column: str | None, data, strip_html: bool) -> pd.DataFrame:
    """The file's texts (CSV, TSV, JSONL or Parquet, by extension, as training data is read), and their labels as
    the run's data.label_map reads them when the label column is there (NaN where the map drops a label: the
    review is scored, not counted). Validated as training data is."""
    path = path.expanduser()
    frame, sep = data_lib.read_table(path, text_column)
    if label_column is None and data.label_column in frame.columns:
        label_column = data.label_column  # the run's own label column, when the file has it
    if sep is not None:
        data_lib.refuse_repeated_columns(path, [column for column in (text_column, label_column) if column], sep)
    where = f"data file {path}"
    hint = "use --text-column/--label-column"
    texts, _ = data_lib.labelled(frame, where, text_column, None, columns_hint=hint)
    if label_column is not None:
        if label_column not in frame.columns:
            data_lib.labelled(frame, where, text_column, label_column, columns_hint=hint)  # its one-line error
        label_map = labels_lib.resolve(data.get("label_map"))
        texts["label"] = data_lib.label_values(frame[label_column].reset_index(drop=True), where, label_column,
                                               label_map)  # fmt: skip
    return data_lib.stripped(texts, f"{where}: column '{text_column}'") if strip_html else texts


def read_input(args: argparse.Namespace, cfg) -> pd.DataFrame:
    """Reviews to score: `text`, `label` when the file has labels; indexed by 0-based input row."""
    data = cfg.data
    if args.csv is None:
        if sys.stdin.isatty():
            print("reading reviews from stdin, one per line (end with Ctrl-D); or pass --csv FILE", file=sys.stderr)
        return read_stdin(sys.stdin, data.strip_html)
    return read_file(args.csv, args.text_column or data.text_column, args.label_column, data, data.strip_html)


def device_of(requested: str) -> torch.device:
    if not DEVICE.fullmatch(requested):
        raise UserError(f"--device: unknown device '{requested}'; choose from auto, cpu, cuda, cuda:N")
    try:
        return pick_device(requested)
    except UserError as err:
        raise UserError(f"--device: {str(err).split(': ', 1)[-1]}") from None


def score(run: Run, frame: pd.DataFrame, batch_size: int | None, device: torch.device) -> np.ndarray:
    """Probabilities of the frame's texts by the run's model, in the frame's order."""
    cfg = run.cfg
    trained = load_model(run)
    cut = {"truncation": cfg.data.truncation, "head_fraction": cfg.data.head_fraction}
    unlabelled = frame if "label" in frame else frame.assign(label=0)  # encode wants a label; it goes unused
    rows = data_lib.encode(unlabelled, trained.tokenizer, cfg.trainer.max_length, **cut)
    batch_size = batch_size or cfg.trainer.eval_batch_size
    progress = -(-len(rows) // batch_size) >= PROGRESS_MIN_BATCHES
    model = trained.model.to(device)
    return predict(model, rows, trained.tokenizer, batch_size, device, trained.dtype, progress=progress)


def predictions_frame(frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": frame.index.to_numpy(),
            "text_prefix": [text[:PREFIX_CHARS] for text in frame["text"]],
            "prob": probs,
            "prediction": (probs >= 0.5).astype(int),
        }
    )


def check_out(out: Path | None) -> None:
    if out is None:
        return
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name a file")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} not found")


def check_out_spares(out: Path | None, csv: Path | None, run: Run) -> None:
    """--out replaces the file it names: never the input, nor a file in a run directory (the one used or any
    other), where it could replace the run's record, predictions or weights. Paths are compared resolved."""
    if out is None:
        return
    if csv is not None:
        csv = csv.expanduser()
        same = out.exists() and csv.exists() and os.path.samefile(out, csv)  # hard links and symlinks too
        if same or out.resolve() == csv.resolve():
            raise UserError(f"--out {out}: is the --csv input {csv}; write the scores to another file")
    holder = run_holding(out, run)
    if holder is not None:
        raise UserError(f"--out {out}: is inside the run directory {holder}; write the scores outside it")


def write(predictions: pd.DataFrame, out: Path | None) -> None:
    """The scores as CSV, their text prefixes neutralised against formula injection (outputs.neutralised)."""
    if out is None:
        neutralised(predictions).to_csv(sys.stdout, index=False)
        return
    write_csv(predictions, out, index=False)


def accuracy_line(labels: np.ndarray, predictions: np.ndarray) -> str:
    from sentiment_lora.analysis.stats import wilson_interval

    correct, n = int((labels == predictions).sum()), len(labels)
    low, high = wilson_interval(correct, n)
    return f"accuracy {correct / n:.4f} ({correct}/{n} reviews; 95% interval [{low:.3f}, {high:.3f}])"


def run_predict(args: argparse.Namespace) -> None:
    out = args.out.expanduser() if args.out else None
    check_out(out)
    run = resolve_run(args)
    check_out_spares(out, args.csv, run)
    device = device_of(args.device)
    frame = read_input(args, run.cfg)  # read before the model loads: a bad input fails fast
    probs = score(run, frame, args.batch_size, device)
    predictions = predictions_frame(frame, probs)
    write(predictions, out)
    if "label" in frame:
        counted = frame["label"].notna().to_numpy()
        if counted.any():
            labels = frame["label"].to_numpy()[counted].astype(int)
            print(accuracy_line(labels, predictions["prediction"].to_numpy()[counted]), file=sys.stderr)
        if not counted.all():
            print(f"{int((~counted).sum())} reviews scored but not counted: the run's data.label_map drops their "
                  "label", file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: stderr is for the accuracy line and errors
    stopped = "predict interrupted ({signal}); " + (
        f"nothing was written to {args.out}" if args.out else "the scores printed before it are incomplete"
    )
    try:
        with one_line_faults(stopped, args.out or Path.cwd()):
            run_predict(args)
    except UserError as err:
        exit_with(err)
    except BrokenPipeError:  # stdout closed early (`... | head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail too
        sys.exit(1)


if __name__ == "__main__":
    main()
