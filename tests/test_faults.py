"""Issue 29, items 3 to 5: no silent garbage (a random encoder from a misnamed checkpoint, a JSON object taken for a
review, prose stripped as a tag, formula cells, secrets in query strings), no hangs (an encoder too big to build, a
sweep over a used-up search space), and one line instead of a traceback (full or read-only disks, stop signals,
damaged model folders and compressed files, summarize's bad inputs)."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from sentiment_lora import credentials
from sentiment_lora import predict as predict_lib
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.export import cli as export_cli
from sentiment_lora.train import cli

from .conftest import REPO, TINY_FAST, write_reviews
from .test_cli import run_in_process
from .test_predict_export import call, train_run

sys.path.insert(0, str(REPO / "scripts"))
import summarize  # noqa: E402  (scripts/ is no package)

# ---- model folders that do not hold the encoder their config.json describes ----

TINY_ARCH = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 512}  # fmt: skip


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    """A tiny BERT saved as a user's folder is: config.json, model.safetensors, the tokenizer's files."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from sentiment_lora.sources import package_model_path

    folder = tmp_path_factory.mktemp("model") / "good"
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model("bert", **TINY_ARCH)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(package_model_path()).save_pretrained(folder)
    return folder


def damaged(good: Path, where: Path, damage: str) -> Path:
    folder = where / damage
    shutil.copytree(good, folder)
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    if damage == "renamed":  # a layer's keys under another name: transformers would init layer 1 at random
        save_file({("x." + k if "layer.1." in k else k): v for k, v in tensors.items()}, str(weights))
    elif damage == "missing_layer":
        save_file({k: v for k, v in tensors.items() if "layer.1." not in k}, str(weights))
    elif damage == "extra_layer":
        extra = tensors["encoder.layer.1.output.dense.weight"].clone()
        save_file({**tensors, "encoder.layer.2.output.dense.weight": extra}, str(weights))
    elif damage == "no_pooler":
        save_file({k: v for k, v in tensors.items() if not k.startswith("pooler.")}, str(weights))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "hidden_size":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    elif damage == "vocab_without_unk":  # vocab.txt another file, as through a symlink
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
        (folder / "words").write_text("the\nmovie\nwas\ngreat\n")
        (folder / "vocab.txt").symlink_to("words")
    elif damage == "huge":  # MiniLM's widths at 100,000 layers: 177 billion parameters
        config = json.loads((folder / "config.json").read_text())
        config.update(hidden_size=384, intermediate_size=1536, num_attention_heads=12, num_hidden_layers=100000)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


FOLDER_ERRORS = {
    "renamed": "the safetensors do not hold the encoder config.json describes: 16 encoder weights missing "
    "(encoder.layer.1.attention.output.LayerNorm.bias, encoder.layer.1.attention.output.LayerNorm.weight, "
    "encoder.layer.1.attention.output.dense.bias, encoder.layer.1.attention.output.dense.weight, ... (16 in all)); "
    "transformers would initialise the missing ones at random",
    "missing_layer": "the safetensors do not hold the encoder config.json describes: 16 encoder weights missing "
    "(encoder.layer.1.attention.output.LayerNorm.bias,",
    "extra_layer": "the safetensors do not hold the encoder config.json describes: 1 unexpected "
    "(encoder.layer.2.output.dense.weight)",
    "hidden_size": "37 weights have other shapes than config.json describes (saved vs config: "
    "embeddings.LayerNorm.bias (32,) vs (64,),",
    "truncated": "its model.safetensors is damaged or truncated (Error while deserializing header:",
    "vocab_without_unk": "its tokenizer cannot encode text (WordPiece error: Missing [UNK] token from the vocabulary)",
    "huge": "the encoder it describes (num_hidden_layers=100000, hidden_size=384) holds 177,",
}


@pytest.mark.timeout(300)  # today's code builds the huge one for minutes, and trains the others on garbage
@pytest.mark.parametrize("damage", list(FOLDER_ERRORS))
def test_a_model_folder_that_does_not_hold_its_encoder_is_one_line_and_trains_nothing(
    monkeypatch, capsys, tmp_path, good_folder, damage
):
    folder = damaged(good_folder, tmp_path, damage)
    write_reviews(tmp_path / "reviews.csv", n=40)
    args = [*TINY_FAST, "trainer.epochs=1", f"model.path={folder}", "data=csv", "data.path=reviews.csv"]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # transformers' bar
    assert len(lines) == 1 and lines[0].startswith(f"error: model.path={folder}: {FOLDER_ERRORS[damage]}"), err
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_a_checkpoint_without_the_pooler_loads_its_encoder_whole(good_folder, tmp_path, caplog):
    from sentiment_lora.model import build_encoder

    from .conftest import compose_config

    cfg = compose_config(["model=tiny", f"model.path={damaged(good_folder, tmp_path, 'no_pooler')}"])
    with caplog.at_level("INFO"):
        encoder = build_encoder(cfg.model, str(tmp_path / "no_pooler"))
    saved = load_file(str(good_folder / "model.safetensors"))
    assert torch.equal(encoder.state_dict()["encoder.layer.1.output.dense.weight"],
                       saved["encoder.layer.1.output.dense.weight"])  # fmt: skip
    assert "2 weights of parts the classifier does not use absent (pooler.dense.bias" in caplog.text


def test_the_parameter_estimate_matches_a_built_encoder_without_building_the_big_one():
    from transformers import AutoConfig, AutoModel

    from sentiment_lora.encoder_weights import parameter_count

    for model_type in ("bert", "albert", "distilbert", "roberta"):
        config = AutoConfig.for_model(model_type, **{**TINY_ARCH, "num_hidden_layers": 5})
        built = sum(p.numel() for p in AutoModel.from_config(config).parameters())
        assert parameter_count(config) == built, model_type


# ---- data read as something it is not ----


@pytest.mark.parametrize("value,kind", [({"a": 1}, "an object"), ([1, 2], "a list")])
def test_a_jsonl_text_that_is_an_object_or_a_list_is_refused_with_its_row(tmp_path, value, kind):
    rows = [{"text": "a fine film", "label": 1}, {"text": "dull", "label": 0}, {"text": value, "label": 0}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UserError) as caught:
        data_lib.read_labelled(path, "text", "label")
    assert str(caught.value) == f"data file {path}: column 'text', data row 3: {kind}, not a text"


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("a<b and c>d, fine", "a<b and c>d, fine"),  # "<b" with words after it: prose, not a bold tag
        ("if x<i and y>z then", "if x<i and y>z then"),
        ('a <b class="x">bold</b> word', "a bold word"),  # attributes with values: markup
        ("<hr noshade>rule<input disabled>", "rule"),  # boolean attributes: markup
        ("<p/>one<br / >two", "one two"),
    ],
)
def test_strip_html_strips_a_tag_only_when_its_attributes_are_htmls(raw, clean):
    assert data_lib.strip_html(raw) == clean


def compressed_files(tmp_path: Path) -> dict[str, Path]:
    plain = write_reviews(tmp_path / "reviews.csv", n=40).read_bytes()
    packed = gzip.compress(plain)
    files = {"plain_named_gz": (tmp_path / "p.csv.gz", plain), "truncated_gz": (tmp_path / "t.csv.gz", packed[:300]),
             "bad_bz2": (tmp_path / "b.csv.bz2", b"BZh9" + plain[:200])}  # fmt: skip
    for path, content in files.values():
        path.write_bytes(content)
    return {name: path for name, (path, _) in files.items()}


@pytest.mark.parametrize(
    "name,reason",
    [
        ("plain_named_gz", "Not a gzipped file (b'te')"),
        ("truncated_gz", "Compressed file ended before the end-of-stream marker was reached"),
        ("bad_bz2", "Invalid data stream"),
    ],
)
def test_a_compressed_file_that_is_not_what_its_name_says_is_one_line(tmp_path, name, reason):
    path = compressed_files(tmp_path)[name]
    suffix = path.suffix
    with pytest.raises(UserError) as caught:
        data_lib.read_labelled(path, "text", "label")
    assert str(caught.value) == (
        f"data file {path}: is not valid {suffix} data ({reason}); its name says {suffix}: recompress it, or rename "
        f"it without {suffix} if it is not compressed"
    )


# ---- CSV cells a spreadsheet would run ----

FORMULAS = ['=HYPERLINK("http://evil.example/x","click")', "+cmd|' /C calc'!A0", "@SUM(A1:A2)", "-2+3", "\tx"]


def test_formula_cells_are_neutralised_and_numbers_are_not():
    from sentiment_lora.outputs import neutralised

    frame = pd.DataFrame({"text": [*FORMULAS, "a fine film"], "prob": [-0.5] * 6})
    out = neutralised(frame)
    assert list(out["text"]) == ["'" + text for text in FORMULAS] + ["a fine film"]
    assert list(out["prob"]) == [-0.5] * 6 and list(frame["text"]) == [*FORMULAS, "a fine film"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("faults"), "fp32", ["trainer.precision=fp32"])


def test_predict_neutralises_formulas_in_its_csv_file_and_on_stdout(run_dir, tmp_path, capsys):
    reviews = tmp_path / "evil.csv"
    # (the tab case is left out: HTML stripping collapses a leading tab before the scores are written)
    pd.DataFrame({"text": [f"{formula} great film" for formula in FORMULAS[:-1]]}).to_csv(reviews, index=False)
    out = tmp_path / "scores.csv"
    code, _, err = call(predict_lib.main, [run_dir, "--csv", reviews, "--out", out], capsys)
    assert code == 0, err
    expected = ["'" + f"{formula} great film"[: predict_lib.PREFIX_CHARS] for formula in FORMULAS[:-1]]
    assert pd.read_csv(out, keep_default_na=False)["text_prefix"].tolist() == expected
    code, stdout, _ = call(predict_lib.main, [run_dir, "--csv", reviews], capsys)
    assert code == 0 and pd.read_csv(io.StringIO(stdout), keep_default_na=False)["text_prefix"].tolist() == expected


# ---- secrets in a URL's query ----


@pytest.mark.parametrize(
    "url,shown",
    [
        ("postgresql://u@host/db?password=S3cretPw", "postgresql://u@host/db?password=***"),
        ("http://h:5000/?token=S3cretTk&x=1", "http://h:5000/?token=***&x=1"),
        ("https://h/x?api_key=K3y0&access_token=T0k3n", "https://h/x?api_key=***&access_token=***"),
        ("http://h/?keepalives=1&page=2", "http://h/?keepalives=1&page=2"),
    ],
)
def test_query_secrets_are_masked_in_urls_messages_and_overrides(url, shown):
    assert credentials.masked(url) == shown
    assert (
        credentials.redacted(f"could not connect to {url} (timeout)", url) == f"could not connect to {shown} (timeout)"
    )
    assert credentials.masked_override(f"hydra.sweeper.storage={url}") == f"hydra.sweeper.storage={shown}"


def test_an_unparsable_override_with_a_query_secret_is_one_masked_line(monkeypatch, capsys, tmp_path):
    args = ["model=tiny", "logger=mlflow", "logger.mlflow.tracking_uri=http://h/?token=S3cretTk", "dry_run=true"]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    assert code == 2 and "S3cretTk" not in err
    assert err.splitlines() == [
        "error: config logger.mlflow.tracking_uri: Hydra cannot parse the value http://h/?token=*** unquoted; "
        "quote it: 'logger.mlflow.tracking_uri=\"...\"'"
    ]


def test_a_tracking_uri_with_a_query_secret_is_refused_before_hydra_saves_it(monkeypatch, capsys, tmp_path):
    write_reviews(tmp_path / "reviews.csv", n=40)
    args = [*TINY_FAST, "logger=mlflow", 'logger.mlflow.tracking_uri="http://h/?token=S3cretTk"', "data=csv",
            "data.path=reviews.csv", "hydra.run.dir=R"]  # fmt: skip
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    assert code == 2 and "S3cretTk" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: config logger.mlflow.tracking_uri: http://h/?token=*** holds a secret in its query")
    assert not (tmp_path / "R").exists()


def test_a_storage_error_masks_a_password_given_in_the_query(monkeypatch, capsys, tmp_path):
    from .test_sweeper import cli_sweep

    storage = "postgresql://u@127.0.0.1:1/optuna?password=S3cretPw"
    code, err = cli_sweep(monkeypatch, capsys, tmp_path, f'hydra.sweeper.storage="{storage}"')
    assert code == 2 and len(err) == 1 and "S3cretPw" not in err[0], err
    assert err[0].startswith("error: config hydra.sweeper.storage: cannot open postgresql://u@127.0.0.1:1/optuna?"
                             "password=***: ")  # fmt: skip


# ---- sweeps over a search space that runs out ----

LAUNCHED = []


def counting_task(cfg) -> float:
    LAUNCHED.append(cfg.x)
    return float(cfg.x)


@pytest.mark.timeout(120)  # today's code runs all 100,000 trials
@pytest.mark.parametrize("points", [[7], [3, 5]])
def test_a_sweep_stops_once_its_search_space_is_used_up_and_trains_no_point_twice(
    hydra_sweep_runner, tmp_path, capsys, points
):
    from .test_sweeper import CONFIG

    LAUNCHED.clear()
    storage = f"sqlite:///{tmp_path}/study.db"
    choice = f"choice({','.join(map(str, points))})"
    overrides = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=100000", f"x={choice}"]
    with hydra_sweep_runner(**{**CONFIG, "calling_file": __file__}, task_function=counting_task,
                            temp_dir=tmp_path / "sweep", overrides=overrides):  # fmt: skip
        pass
    assert sorted(LAUNCHED) == points  # each point trained once
    study = optuna.load_study(study_name="dummy", storage=storage)
    assert {t.params["x"] for t in study.trials} == set(points) and len(study.trials) < 50
    repeats = [t for t in study.trials if "same_as_trial" in t.user_attrs]
    assert all(t.value == study.trials[t.user_attrs["same_as_trial"]].value for t in repeats)
    assert f"search space exhausted: each of its {len(points)} configurations has a finished trial" in "".join(
        capsys.readouterr()
    )


def test_a_max_failure_rate_above_one_is_one_line(monkeypatch, capsys, tmp_path):
    from .test_sweeper import cli_sweep

    code, err = cli_sweep(monkeypatch, capsys, tmp_path, "hydra.sweeper.max_failure_rate=2")
    assert code == 2 and err == ["error: config hydra.sweeper.max_failure_rate: must be between 0 and 1, got 2.0"]


# ---- full and read-only disks ----


def disk_full_after(nbytes: int):
    """A writer that writes `nbytes` of its file, then finds the disk full (as pandas' close() reports it: no
    file name)."""

    def write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"x" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_predict_on_a_full_disk_is_one_line_and_leaves_no_partial_file(run_dir, tmp_path, capsys, monkeypatch):
    write_reviews(tmp_path / "r.csv", n=10)
    out = tmp_path / "scores.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full_after(100))
    code, _, err = call(predict_lib.main, [run_dir, "--csv", tmp_path / "r.csv", "--out", out], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: no space left on device while writing {out} (") and "free now)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_export_on_a_full_disk_is_one_line_and_leaves_no_folder(run_dir, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export_cli, "write_export", full)
    code, _, err = call(export_cli.main, [run_dir, tmp_path / "E"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: no space left on device while writing {tmp_path / 'E'} (")
    assert list(tmp_path.iterdir()) == []


def test_summarize_on_a_full_disk_is_one_line_and_leaves_no_partial_csv(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full_after(50))
    out = tmp_path / "s.csv"
    assert summarize.main([str(run_dir), "--csv", str(out), "--plot", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: no space left on device while writing {out} ("), err
    assert not any(line.startswith("Traceback") for line in err) and list(tmp_path.iterdir()) == []


def test_a_read_only_completed_run_re_run_is_the_no_op_and_another_config_the_refusal(
    run_dir, tmp_path, capsys, monkeypatch
):
    """os.access says the folder cannot be written, as for a read-only mount (root passes chmod): Hydra logs to the
    console there instead of failing with "Unable to configure handler 'file'"."""
    copy = tmp_path / "RO"
    shutil.copytree(run_dir, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == copy else real_access(path, mode))
    # train_run's command, into the copy
    args = [*TINY_FAST, "trainer.epochs=1", "trainer.eval_batch_size=3", "data=csv",
            f"data.path={run_dir.parent / 'fp32.csv'}", "trainer.precision=fp32", f"hydra.run.dir={copy}"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *args])
    cli()  # the no-op: returns the recorded value, writes nothing
    assert "already holds this configuration's complete run" in "".join(capsys.readouterr())
    code, err = run_in_process(monkeypatch, capsys, tmp_path, [*args, "lora.rank=8"])
    assert code == 2 and err.startswith(f"error: run directory {copy}: holds a complete run of another configuration")
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_dangling_symlink_or_an_unwritable_parent_as_run_dir_is_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    code, err = run_in_process(monkeypatch, capsys, tmp_path, ["model=tiny", "dry_run=true", "hydra.run.dir=link/R"])
    assert code == 2 and err.splitlines() == [
        f"error: config hydra.run.dir: link is a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
    ]
    (tmp_path / "outputs").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path).name != "outputs" and real_access(path, mode))
    code, err = run_in_process(monkeypatch, capsys, tmp_path, ["model=tiny", "dry_run=true"])
    assert code == 2 and err.splitlines() == [
        "error: config hydra.run.dir: outputs is not writable by this user, so outputs/runs cannot be written; "
        "choose another hydra.run.dir"
    ]


# ---- summarize's and the baseline's bad inputs ----


def test_summarize_skips_an_accuracy_outside_zero_one_and_refuses_a_plot_it_cannot_draw(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    metrics = json.loads((bad / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 7.5
    (bad / "metrics.json").write_text(json.dumps(metrics))
    assert summarize.main([str(bad), "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no runs to summarize in {bad} ({bad}/metrics.json: test.accuracy is 7.5, not between 0 and 1; skipped)"
    ]
    before = (run_dir / "head.safetensors").read_bytes()
    plot = run_dir / "head.safetensors"
    assert summarize.main([str(run_dir), "--csv", str(tmp_path / "s.csv"), "--plot", str(plot)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --plot {plot}: matplotlib writes no '.safetensors' figure")
    assert (run_dir / "head.safetensors").read_bytes() == before and not (tmp_path / "s.csv").exists()


def test_the_baseline_refuses_an_out_that_is_a_file_before_fitting(tmp_path, capsys):
    import baseline_tfidf

    (tmp_path / "afile").write_text("mine\n")
    assert baseline_tfidf.main(["data=csv", "data.path=nothing.csv", "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder; choose another --out"
    ]
    assert (tmp_path / "afile").read_text() == "mine\n"


# ---- stop signals, through the real command lines (subprocesses) ----


def stopped(command: list[str], cwd: Path, signum: int, wait_for: Path, slow: str | None = None) -> tuple[int, str]:
    """Run `command`, send `signum` once `wait_for` exists (with `slow`, a function that pauses there: see
    tests/fault_site), and return the exit status and stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if slow:
        site = [str(REPO / "tests" / "fault_site"), env.get("PYTHONPATH")]
        env.update(PYTHONPATH=os.pathsep.join(filter(None, site)), SLORA_TEST_SLOW=f"{slow}:{wait_for}")
    # A background job's SIGINT starts ignored (see test_resume's Ctrl-C test): give the command the default.
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:  # fmt: skip
        deadline = time.monotonic() + 300
        while not wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_mid_training_say_in_one_line_how_to_resume(tmp_path, signum):
    from sentiment_lora.rundir.checkpoint import CHECKPOINT_FILE

    write_reviews(tmp_path / "reviews.csv", n=200)
    run_dir = tmp_path / "R"
    args = [*TINY_FAST, "trainer.epochs=100000", "trainer.precision=fp32", "data=csv", "data.path=reviews.csv",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    code, err = stopped([sys.executable, "-m", "sentiment_lora.train", *args], tmp_path, signum,
                        run_dir / CHECKPOINT_FILE)  # fmt: skip
    assert code == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    name = signal.Signals(signum).name
    assert len(lines) == 1 and re.fullmatch(
        rf"error: stopped by {name} in epoch \d+ of 100000; {re.escape(str(run_dir / CHECKPOINT_FILE))} holds epoch "
        rf"\d+: to resume from there, re-run the same command with hydra.run.dir={re.escape(str(run_dir))}",
        lines[0],
    ), err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_export_is_one_line_and_leaves_no_temporary_folder(run_dir, tmp_path, signum):
    out = tmp_path / "exports" / "E"
    out.parent.mkdir()
    command = [sys.executable, "-m", "sentiment_lora.export", str(run_dir), str(out)]
    code, err = stopped(command, tmp_path, signum, tmp_path / "reached", slow="sentiment_lora.data:encode")
    name = signal.Signals(signum).name
    assert code == 128 + signum and error_lines(err) == [
        f"error: export interrupted ({name}); nothing was written: {out} was left as it was"
    ], err
    assert list(out.parent.iterdir()) == []  # no .E.*.tmp folder


@pytest.mark.slow
def test_ctrl_c_during_predict_is_one_line(run_dir, tmp_path):
    write_reviews(tmp_path / "r.csv", n=10)
    command = [sys.executable, "-m", "sentiment_lora.predict", str(run_dir), "--csv", "r.csv", "--out", "s.csv"]
    code, err = stopped(command, tmp_path, signal.SIGINT, tmp_path / "reached", slow="sentiment_lora.data:encode")
    assert code == 130 and error_lines(err) == ["error: predict interrupted (SIGINT); nothing was written to s.csv"], (
        err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "reached"]


@pytest.mark.slow
def test_ctrl_c_during_an_optuna_sweep_is_one_line(tmp_path):
    write_reviews(tmp_path / "reviews.csv", n=40)
    command = [sys.executable, "-m", "sentiment_lora.train", "-m", "hparams_search=lora_optuna", *TINY_FAST,
               "data=csv", "data.path=reviews.csv", "hydra.sweeper.n_trials=3", "hydra.sweep.dir=S"]  # fmt: skip
    code, err = stopped(command, tmp_path, signal.SIGINT, tmp_path / "reached", slow="sentiment_lora.data:encode")
    assert code == 130 and error_lines(err) == [
        "error: sweep interrupted (SIGINT); the runs it finished are kept in their run directories (an Optuna study "
        "records the interrupted trial as FAIL)"
    ], err


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs at tmp_path/full: a real full disk (root only: where mount fails, the mocked tests above
    stand in)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:  # fmt: skip
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def command_line(module_or_script: str, *args) -> list[str]:
    entry = [module_or_script] if module_or_script.endswith(".py") else ["-m", module_or_script]
    return [sys.executable, *entry, *map(str, args)]


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_for_train_predict_export_and_summarize(run_dir, small_tmpfs, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    write_reviews(tmp_path / "reviews.csv", n=40)
    target = small_tmpfs / "T"
    train = [*TINY_FAST, "trainer.epochs=1", "data=csv", "data.path=reviews.csv", f"hydra.run.dir={target}"]
    done = subprocess.run(command_line("sentiment_lora.train", *train), cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and error_lines(done.stderr)[0].startswith(
        f"error: run directory {target}: no space left on device while writing {target}"
    ), done.stderr
    shutil.rmtree(target)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as handle:  # every byte taken
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    commands = {
        "predict": command_line("sentiment_lora.predict", run_dir, "--csv", "reviews.csv", "--out", small_tmpfs / "p"),
        "export": command_line("sentiment_lora.export", run_dir, small_tmpfs / "E"),
        "summarize": command_line(str(REPO / "scripts" / "summarize.py"), run_dir, "--csv", small_tmpfs / "s.csv",
                                  "--plot", small_tmpfs / "s.png"),
    }  # fmt: skip
    for name, command in commands.items():
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 2 and len(error_lines(done.stderr)) == 1, (name, done.stderr)
        assert "no space left on device while writing" in done.stderr and "free now)" in done.stderr, done.stderr
        assert [path.name for path in small_tmpfs.iterdir()] == ["filler"], name  # nothing half-written
