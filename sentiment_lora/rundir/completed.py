"""A completed run, found and checked before anything loads from it: the run directory (or an Optuna study's best
trial), its record, its saved model files and its config. Used by predict and export; every problem is one
UserError line that names the file and the way out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentiment_lora import __version__, methods
from sentiment_lora.config import structured
from sentiment_lora.credentials import masked, redacted
from sentiment_lora.errors import UserError
from sentiment_lora.rundir.claim import RUN_CONFIG_FILE, SEED_DIR, holds_run, read_own_config, seed_runs
from sentiment_lora.rundir.files import sha256_of
from sentiment_lora.rundir.record import METRICS_FILE, RUN_FORMAT, read_metrics


@dataclass
class Run:
    dir: Path
    cfg: DictConfig  # the run's composed config, merged onto this version's schema
    metrics: dict
    hydra_dir: Path  # the .hydra folder of the command that made it (the parent's, for a seed_<n> run)
    own: DictConfig | None = None  # its run.yaml (None for a run written before run.yaml existed)


def check_format(metrics: dict, where: Path) -> None:
    """Refuse a record of another run format: this version would misread its files."""
    found = metrics.get("run_format", RUN_FORMAT)  # written before the field existed: the first format
    if found != RUN_FORMAT:
        made_by = metrics.get("version") or "another version"
        raise UserError(
            f"{where}: run format {found!r}, written by sentiment-lora {made_by}; this is sentiment-lora "
            f"{__version__}, which reads run format {RUN_FORMAT}: use the version that made the run"
        )


def _method_name(saved: DictConfig, path: Path) -> str:
    """The method a saved config ran (the default for one written before methods existed), refused in one line
    when this install does not register it (a method from a package not installed here)."""
    name = OmegaConf.select(saved, "method.name", default=None) or methods.DEFAULT
    if name not in methods.names():
        raise UserError(
            f"{path}: the run trained with method={name}, which this install does not register (registered: "
            f"{', '.join(methods.names())}); install the package that provides it"
        )
    return name


def _load_config(
    path: Path, seed: int | None, own: DictConfig | None = None, own_path: Path | None = None
) -> DictConfig:
    """The run's composed config on this version's schema: keys it lacks take their defaults, and a key this
    version does not know is refused (the run came from another version). From its run.yaml when it has one."""
    if own is None and not path.is_file():
        raise UserError(
            f"{path}: not found; predict and export read the run's config from its {RUN_CONFIG_FILE}, or from there "
            "for a run written before run.yaml existed"
        )
    try:
        if own is not None:
            path = own_path
        saved = own.config if own is not None else OmegaConf.load(path)
        cfg = OmegaConf.merge(structured(_method_name(saved, path)), saved)
    except OmegaConfBaseException as err:
        reason = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: does not fit sentiment-lora {__version__}'s config ({reason})") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the run's config ({err})") from None
    if seed is not None:  # a replicate of seeds=[...]: its config is the parent's with this trainer.seed
        cfg.trainer.seed, cfg.seeds = seed, None
    return cfg


def open_run(run_dir: str | Path) -> Run:
    """A completed run with its saved model, checked file by file; the run's config and record."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir}: not found")
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir}: is not a directory")
    metrics_path = run_dir / METRICS_FILE
    seeds = seed_runs(run_dir)
    if not metrics_path.exists() and seeds:
        listed = ", ".join(str(path) for path in seeds)
        raise UserError(f"run directory {run_dir}: holds one run per seed; pick one of {listed}")
    if not metrics_path.exists():
        raise UserError(f"{metrics_path}: not found; the run did not complete (or is still running)")
    try:
        metrics = read_metrics(run_dir)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{metrics_path}: cannot read it ({err})") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path}: not a sentiment-lora run record")
    check_format(metrics, metrics_path)
    if metrics.get("status") != "complete":
        raise UserError(
            f"{metrics_path}: status is {metrics.get('status')!r}; only a complete run has a trained model to use"
        )
    seed_match = SEED_DIR.fullmatch(run_dir.name)
    hydra_dir, seed = run_dir / ".hydra", None
    if not hydra_dir.is_dir() and seed_match and (run_dir.parent / ".hydra").is_dir():
        hydra_dir, seed = run_dir.parent / ".hydra", int(seed_match.group(1))
    check_hashes(run_dir, metrics)  # run.yaml's first (runs before it was hashed record none, and still open)
    own = read_own_config(run_dir)  # its own config, written with the run; a seed_<n> run has its own too
    cfg = _load_config(hydra_dir / "config.yaml", None if own is not None else seed, own, run_dir / RUN_CONFIG_FILE)
    missing = [name for name in methods.get(cfg.method.name).files() if not (run_dir / name).is_file()]
    if missing:
        raise UserError(
            f"run directory {run_dir}: no {', '.join(missing)}; the run saved no model (save_adapter=false?)"
        )
    if cfg.model.source == "random" and not cfg.model.path and not (run_dir / "encoder.safetensors").is_file():
        raise UserError(f"run directory {run_dir}: no encoder.safetensors, which a random-init model is saved in")
    return Run(run_dir, cfg, metrics, hydra_dir, own)


def check_hashes(run_dir: Path, metrics: dict) -> None:
    """Each saved file against the sha256 metrics.json recorded when the run wrote it (older runs record none)."""
    for name, expected in (metrics.get("sha256") or {}).items():
        path = run_dir / name
        if path.is_file() and sha256_of(path) != expected:
            raise UserError(
                f"{path}: its sha256 differs from the one {METRICS_FILE} recorded when the run saved it; the file "
                "was changed or damaged since: restore it from a copy, or train the run again"
            )


def overrides_of(run: Run) -> list[str] | None:
    """The command-line overrides of the command that made the run (its run.yaml, or for an older run Hydra's
    overrides.yaml), or None."""
    if run.own is not None:
        return [str(item) for item in run.own.get("overrides") or []]
    path = run.hydra_dir / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, ValueError, OmegaConfBaseException):
        return None
    return [str(item) for item in loaded] if isinstance(loaded, list) else None


def study_run_dir(storage: str, study_name: str, trial_number: int | None = None) -> Path:
    """The run directory of a study's best completed trial, or of trial `trial_number`.

    A multi-objective study has no single best trial: the user picks one of its Pareto front with --trial.
    """
    import optuna

    check_readable_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shown = masked(storage)  # the URL as messages show it: never its password
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"--study {study_name}: no such study in {shown}") from None
    except Exception as err:  # storage URLs fail in many ways (driver, path, permissions): all one line here
        problem = redacted(str(getattr(err, "orig", None) or err).strip(), storage).splitlines()[0]
        raise UserError(f"--storage {shown}: cannot open it ({type(err).__name__}: {problem})") from None
    complete = optuna.trial.TrialState.COMPLETE
    if trial_number is not None:
        trials = [trial for trial in study.get_trials(deepcopy=False) if trial.number == trial_number]
        if not trials:
            raise UserError(f"study {study_name}: no trial {trial_number}")
        trial = trials[0]
        if trial.state != complete:
            raise UserError(f"study {study_name}: trial {trial_number} is {trial.state.name}, not COMPLETE")
    elif len(study.directions) > 1:
        front = ", ".join(str(trial.number) for trial in sorted(study.best_trials, key=lambda t: t.number))
        raise UserError(
            f"study {study_name} has {len(study.directions)} objectives, so no single best trial; pick one with "
            f"--trial N (its Pareto front: {front or 'no completed trial'})"
        )
    else:
        if not study.get_trials(deepcopy=False, states=(complete,)):
            raise UserError(f"study {study_name}: no completed trial")
        trial = study.best_trial
    run_dir = trial.user_attrs.get("run_dir")
    if not run_dir:
        raise UserError(f"study {study_name}: trial {trial.number} records no run_dir (not run by this harness?)")
    return Path(run_dir)


# Weights files of a run that load_trained reads (encoder.safetensors: random-init models only).
WEIGHT_FILES = (
    "adapter/adapter_model.safetensors", "head.safetensors", "encoder.safetensors", "encoder_trained.safetensors",
)  # fmt: skip


def load_model(run: Run):
    """The run's trained classifier (trained.load_trained), with a damaged weights file (truncated, empty, not
    safetensors) one line naming it instead of the loader's traceback."""
    from safetensors import SafetensorError, safe_open

    from sentiment_lora.trained import load_trained

    for name in WEIGHT_FILES:
        path = run.dir / name
        if not path.is_file():
            continue  # open_run has refused a run without the files it needs
        try:
            with safe_open(str(path), framework="pt"):  # reads the header and checks it covers the file
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"{path}: not a complete safetensors file ({err}); the run's saved model is damaged: restore the "
                "file from a copy, or train the run again"
            ) from None
    return load_trained(run.cfg.model, run.dir, methods.get(run.cfg.method.name))


def run_holding(path: Path, run: Run | None = None) -> Path | None:
    """The run directory that `path` is in (or is), if any: `run`'s own (its seeds' parent included), or any folder
    that holds a run (immutable.holds_run: a metrics.json, a checkpoint, seed_<n>/ runs). A file written there
    could replace one of the run's files. Symlinks resolved."""
    resolved = Path(path).expanduser().resolve()
    own = {run.dir.resolve(), run.hydra_dir.parent.resolve()} if run is not None else set()
    for folder in (resolved, *resolved.parents):
        if folder in own or holds_run(folder):
            return folder
    return None


def check_readable_storage(storage: str) -> None:
    """Reading a study must not write: Optuna creates a missing SQLite file (with empty tables) when it opens one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        raise UserError(f"--storage: not a database URL: {masked(storage)}") from None
    in_memory = url.database in (None, "", ":memory:") or url.query.get("uri") == "true"
    if url.get_backend_name() == "sqlite" and not in_memory and not Path(url.database).is_file():
        raise UserError(f"--storage {masked(storage)}: no SQLite file {url.database}")
