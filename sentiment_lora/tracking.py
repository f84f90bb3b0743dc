"""Experiment tracking, off by default: `logger=tensorboard|mlflow|many` (conf/logger/) sends a run's config, each
epoch's metrics, its final metrics, parameter counts and status to TensorBoard event files and/or an MLflow store.

`tracked` wraps `run.train`. It opens the configured loggers, hands the run an epoch hook that logs each epoch and
then asks the run's own hook (a sweep trial's pruner), and when the run ends, however it ends, closes every logger
with the run's status and the final numbers of its metrics.json: the logs say what the record says. The run's own
hook is told too (`finish`): a sweep trial adds the outcome to its Optuna user attributes.

Metric names, the same in both backends: `epoch/<key>` per epoch (step = epoch) for each key of a metrics.json
history entry (train_loss, val_accuracy, val_loss, train_time_s, train_samples_per_s, time_s) and the other
validation metrics (val_f1, val_roc_auc, val_precision, val_recall); at the end (step = epochs run) `test/<metric>`,
`val/<metric>` (the selected epoch's), `selected_epoch`, `params/{trainable,total,trainable_pct,lora,head,encoder}`,
`epochs_run` and `time_s`. Parameters: the resolved config, flattened to dotted keys (`lora.rank`).

tensorboard and mlflow (the `track` extra) are imported only when their logger is on.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from sentiment_lora import credentials
from sentiment_lora.config import validate
from sentiment_lora.errors import UserError
from sentiment_lora.rundir import record as results

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sentiment-lora"
# A run's status as the loggers record it: metrics.json's (complete, pruned, failed), or interrupted (Ctrl-C).
MLFLOW_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "interrupted": "KILLED"}


class Logger(Protocol):
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def finish(self, status: str, final: dict[str, float], step: int, error: str | None) -> None: ...


def tracked(train: Callable) -> Callable:
    """`train(cfg, run_dir, on_epoch)` with the configured loggers and the run's hook told how the run ended."""

    @functools.wraps(train)
    def tracked_train(cfg, run_dir: Path, on_epoch=None):
        with tracked_run(cfg, run_dir, on_epoch) as hook:
            return train(cfg, run_dir, hook)

    return tracked_train


@contextmanager
def tracked_run(cfg, run_dir: Path, on_epoch=None) -> Iterator:
    """The epoch hook a run gets inside the block (`on_epoch` itself when nothing is tracked), and the loggers
    closed with the run's status when the block ends, however it ends. A population of trials (population/)
    opens one per member, around the member's own setup, fit and record."""
    loggers = [] if cfg.dry_run else open_loggers(cfg, run_dir)
    if not loggers and not hasattr(on_epoch, "finish"):
        yield on_epoch
        return
    hook = RunHook(on_epoch, loggers)
    try:
        yield hook
    except BaseException as err:
        try:
            hook.finish(run_dir, status_of(err), f"{type(err).__name__}: {err}")
        except Exception as problem:  # noqa: BLE001 - the run's own error is the one to raise
            log.error("closing the loggers failed: %s: %s", type(problem).__name__, problem)
        raise
    hook.finish(run_dir, "complete")


def status_of(error: BaseException) -> str:
    from sentiment_lora.trial import is_pruned

    if is_pruned(error):
        return "pruned"
    return "failed" if isinstance(error, Exception) else "interrupted"


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics` (an undefined ROC AUC is NaN: left out, as metrics.json has it null)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def epoch_metrics(val: dict[str, float], entry: dict | None) -> dict[str, float]:
    """One epoch's metrics: its history entry, and the validation metrics the entry leaves out."""
    metrics = {f"epoch/val_{name}": value for name, value in val.items() if name != "n"}
    metrics.update({f"epoch/{key}": value for key, value in (entry or {}).items() if key != "epoch"})
    return _numbers(metrics)


def final_metrics(record: dict | None) -> dict[str, float]:
    """The numbers of a metrics.json record that describe the run as a whole."""
    if not record:
        return {}
    test, val, params = record.get("test") or {}, dict(record.get("val") or {}), record.get("params") or {}
    metrics: dict[str, Any] = {"selected_epoch": val.pop("epoch", None)}
    metrics.update({f"test/{name}": value for name, value in test.items() if name != "n"})
    metrics.update({f"val/{name}": value for name, value in val.items() if name != "n"})
    metrics.update({f"params/{name}": params.get(name) for name in ("trainable", "total", "trainable_pct")})
    metrics.update({f"params/{group}": count for group, count in (params.get("by_group") or {}).items()})
    metrics.update(epochs_run=record.get("epochs_run"), time_s=record.get("time_s"))
    return _numbers(metrics)


class RunHook:
    """The epoch hook `train` gets (loop.EpochHook): logs each epoch, then asks the run's own hook, if any."""

    def __init__(self, inner, loggers: list[Logger]) -> None:
        self.inner, self.loggers, self.logged = inner, loggers, set()

    def __call__(self, epoch: int, val: dict[str, float], entry: dict | None = None) -> bool:
        self._each("log_epoch", epoch, epoch_metrics(val, entry))
        self.logged.add(epoch)
        return bool(self.inner is not None and self.inner(epoch, val, entry))

    def stopped(self) -> Exception:
        return self.inner.stopped()

    def finish(self, run_dir: Path, status: str, error: str | None = None) -> None:
        # A completed or pruned run has written its record; a failed one may not have (or an older one is there).
        record = results.read_metrics(run_dir) if status in ("complete", "pruned") else None
        for entry in (record or {}).get("history", []):
            if entry["epoch"] not in self.logged:  # a resumed run: the epochs before the checkpoint
                self._each("log_epoch", entry["epoch"], epoch_metrics({}, entry))
        step = (record or {}).get("epochs_run") or max(self.logged, default=0)
        self._each("finish", status, final_metrics(record), step, error)
        if hasattr(self.inner, "finish"):
            self.inner.finish(status, record)

    def _each(self, method: str, *args: Any) -> None:
        # A logger that cannot write (a full disk, a busy database) costs its log, not the run: metrics.json is the
        # run's record. Opening a logger, by contrast, fails the run before it starts.
        for logger in self.loggers:
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # noqa: BLE001
                log.error("%s %s failed: %s: %s", type(logger).__name__, method, type(err).__name__, err)


# ---- opening the loggers: names, parameters, backends ----


def open_loggers(cfg, run_dir: Path) -> list[Logger]:
    spec = cfg.get("logger")
    if not spec or not (spec.tensorboard or spec.mlflow):
        return []
    validate(cfg)  # a config mistake is one line before anything is logged
    check_tracking_uri(cfg)
    experiment, name = experiment_name(cfg), run_name(run_dir)
    params = flat_params(cfg)
    tags = {"run_dir": str(Path(run_dir).resolve()), "config_id": results.config_id(cfg)}
    if cfg.trial.number is not None:
        tags["trial_number"] = str(cfg.trial.number)
    loggers: list[Logger] = []
    if spec.mlflow:  # first: the one whose store may refuse, before TensorBoard writes anything
        loggers.append(MlflowLogger(spec.mlflow.tracking_uri, experiment, name, params, tags))
    if spec.tensorboard:
        loggers.append(TensorBoardLogger(spec.tensorboard.dir, experiment, name, params))
    log.info("logging to %s as %s/%s", ", ".join(type(lg).__name__ for lg in loggers), experiment, name)
    return loggers


TRACKING_URI_KEY = "logger.mlflow.tracking_uri"


def check_tracking_uri(cfg) -> None:
    """Refuse a password written into logger.mlflow.tracking_uri: Hydra has saved it, as given, in the run's
    .hydra/config.yaml and overrides.yaml before the run starts (a refused run leaves no directory). MLflow and
    libpq read credentials from the environment instead, and ${oc.env:VAR} is saved unresolved."""
    spec = cfg.get("logger")
    mlflow = spec.get("mlflow") if spec else None
    if not mlflow or OmegaConf.is_interpolation(mlflow, "tracking_uri"):
        return
    uri = mlflow.get("tracking_uri")
    if credentials.password_of(uri) is not None:
        raise UserError(
            f"config {TRACKING_URI_KEY}: {credentials.masked(uri)} holds a password, which Hydra saves in the run's "
            ".hydra/ files; drop it from the URI and set MLFLOW_TRACKING_PASSWORD (an MLflow server) or PGPASSWORD "
            "or ~/.pgpass (a PostgreSQL store), or give the URI as ${oc.env:VAR} (docs/tracking.md)"
        )
    if credentials.query_secrets(uri):
        raise UserError(
            f"config {TRACKING_URI_KEY}: {credentials.masked(uri)} holds a secret in its query, which Hydra saves in "
            "the run's .hydra/ files; drop it from the URI and set MLFLOW_TRACKING_TOKEN (an MLflow server), or give "
            "the URI as ${oc.env:VAR} (docs/tracking.md)"
        )


def experiment_name(cfg) -> str:
    """logger.experiment, else the sweep's study name, else the sweep folder's name, else 'sentiment-lora'."""
    if cfg.logger.experiment:
        return cfg.logger.experiment
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        return hydra_cfg.sweeper.get("study_name") or Path(hydra_cfg.sweep.dir).name
    return DEFAULT_EXPERIMENT


def run_name(run_dir: Path) -> str:
    """The run directory's path below the sweep (or runs) folder: `trial_3`, `0`, `trial_3/seed_1`, or the run
    directory's name."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(run_dir).resolve()
    if HydraConfig.initialized():
        parent = Path(HydraConfig.get().runtime.output_dir).resolve().parent
        if run_dir.is_relative_to(parent):
            return str(run_dir.relative_to(parent))
    return run_dir.name


def flat_params(cfg) -> dict[str, Any]:
    """The resolved config as dotted keys; numbers, strings and null stay, lists and booleans become JSON text."""

    def flatten(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, item in node.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
        if isinstance(node, (list, bool)):
            node = json.dumps(node)
        return {prefix[:-1]: node}

    # Resolved, so a URI given as ${oc.env:VAR} is its value here: its password is masked before it is logged.
    return flatten(credentials.masked_values(OmegaConf.to_container(cfg, resolve=True)), "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _import(module: str, logger: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"logger={logger} needs the track extra: pip install -e '.[track]' ({err})") from None


def absolute_uri(uri: str) -> str:
    """A SQLite URI with a relative path made absolute against where the command started (Hydra may change the
    working directory), its folder created; any other URI as it is."""
    from hydra.utils import to_absolute_path

    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    path = Path(to_absolute_path(uri[len("sqlite:///") :]))
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, one process at a time: parallel trials (joblib, several workers) meeting a new database
    would each create MLflow's tables, and all but one fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///") :] + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TensorBoardLogger:
    """Event files in <dir>/<experiment>/<run>: scalars, the config as text, and an HParams session (the config,
    the status and the final metrics) so TensorBoard's HParams tab compares the runs of a sweep."""

    def __init__(self, root: str, experiment: str, name: str, params: dict[str, Any]) -> None:
        from hydra.utils import to_absolute_path

        _import("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(to_absolute_path(root)) / experiment / name
        self.params = params
        self.writer = SummaryWriter(str(self.dir))
        config = "\n".join(f"    {key}: {_text(value)}" for key, value in params.items())  # markdown code block
        self.writer.add_text("config", config)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, status: str, final: dict[str, float], step: int, error: str | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("status", status if error is None else f"{status}: {error}", step)
        session = hparams({**self.params, "status": status}, final)
        for summary in session:
            self.writer._get_file_writer().add_summary(summary)
        self.writer.close()


class MlflowLogger:
    """One MLflow run (named after the run directory) in the experiment; config as params, a few tags, metrics
    with steps, and the status at the end: FINISHED, KILLED (pruned, interrupted) or FAILED."""

    def __init__(self, uri: str, experiment: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        _import("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from sqlalchemy.exc import SQLAlchemyError

        self.uri = absolute_uri(uri)
        try:
            with store_lock(self.uri), warnings.catch_warnings():
                # mlflow's SQL store uses an SQLAlchemy loader option that SQLAlchemy 2.1 deprecates.
                warnings.filterwarnings("ignore", message=".*noload.*", category=DeprecationWarning)
                self.client = MlflowClient(self.uri)
                experiment_id = self._experiment(experiment)
                self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            self.client.log_batch(self.run_id, params=[Param(key, _text(value)) for key, value in params.items()])
        except (MlflowException, SQLAlchemyError) as err:  # a database store may fail below MLflow
            problem = credentials.redacted(str(err).strip(), uri, self.uri).splitlines()[0]
            raise UserError(f"config {TRACKING_URI_KEY}: cannot log to {credentials.masked(uri)}: {problem}") from None

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # another trial (a parallel worker) created it first
                found = self.client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _metrics(self, metrics: dict[str, float], step: int):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(key, value, now, step) for key, value in metrics.items()]

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=self._metrics(metrics, epoch))

    def finish(self, status: str, final: dict[str, float], step: int, error: str | None) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag("status", status)] + ([RunTag("error", error[:5000])] if error else [])
        self.client.log_batch(self.run_id, metrics=self._metrics(final, step), tags=tags)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
