"""The command line: `python -m sentiment_lora.train [overrides]` (and `sentiment-lora-train`).

Hydra composes the config; `run.train` does the work. This module holds what surrounds a run: a pre-check of the
command line's config-group options, keys and run directory, and the exception policy: a user's mistake (a full
disk included) is one `error:` line and exit status 2 in a single run, Ctrl-C one line and status 130; inside a
sweep, a failed run records why and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sentiment_lora import choose_model, credentials, locks, methods, signals, trial
from sentiment_lora.config import CONF_DIR, register_configs, unknown_key
from sentiment_lora.errors import USER_ERROR_EXIT, UserError, exit_with
from sentiment_lora.outputs import disk_problem
from sentiment_lora.run import train_seeds
from sentiment_lora.rundir import claim as immutable

log = logging.getLogger(__name__)
register_configs()
immutable.register_resolver()  # conf/config.yaml's hydra.output_subdir


def _remove_if_only_hydra_files(run_dir: Path) -> None:
    """A run stopped by a user error leaves no directory behind, unless something else is in it."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", immutable.RUN_CONFIG_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _as_user_error(err: Exception, run_dir: Path) -> Exception:
    """A full or read-only disk is the user's to fix: one line. The writes are atomic, so nothing half-written is
    left."""
    problem = disk_problem(err, run_dir)
    if problem is not None:
        return UserError(
            f"run directory {run_dir}: {problem}; nothing half-written was left: free space (or make it writable) "
            "and re-run the same command (it resumes after the last checkpointed epoch)"
        )
    return err


def _interrupted(cfg, run_dir: Path, how: str = "interrupted") -> str:
    """Ctrl-C's one line (SIGTERM's and SIGHUP's: `how` says which): the epoch the run stopped in and how to resume
    it."""
    from sentiment_lora.rundir.checkpoint import CHECKPOINT_FILE, read_checkpoint

    found = sorted(run_dir.glob(f"**/{CHECKPOINT_FILE}"))
    if not found:
        return (
            f"{how} before the run's first checkpoint (trainer.epochs={cfg.trainer.epochs}); to start it again, "
            f"re-run the same command with hydra.run.dir={run_dir}"
        )
    try:
        done = read_checkpoint(found[-1], tensors=False)[0].get("epoch", 0)
    except UserError:
        done = "?"
    epochs = cfg.trainer.epochs
    stopped = f"in epoch {done + 1} of {epochs}" if isinstance(done, int) and done < epochs else "after its epochs"
    return (
        f"{how} {stopped}; {found[-1]} holds epoch {done}: to resume from there, re-run the same command with "
        f"hydra.run.dir={run_dir}"
    )


def _stop_logging_into(run_dir: Path) -> None:
    """Detach the log file Hydra opened in a refused job's run directory: that run is not this job's, and what
    this process logs next (a sweeper's summary of the job) must not land in it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            root.removeHandler(handler)
            handler.close()


def _refused_in_sweep(cfg, run_dir: Path, err: Exception) -> None:
    """A sweep job refused before it wrote a byte (another process's point, another configuration's run, a damaged
    checkpoint): one `error:` line. A grid stops there with status 2, as a single run would, rather than end in
    Hydra's traceback; an Optuna trial raises on, and the study records it as FAIL and goes on."""
    _stop_logging_into(run_dir)
    print(f"error: {err}", file=sys.stderr)
    if cfg.trial.id is None:
        sys.exit(USER_ERROR_EXIT)


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    single = hydra_cfg.mode != RunMode.MULTIRUN
    try:
        locks.acquire(run_dir)  # taken already while Hydra chose hydra.output_subdir (immutable.hydra_subdir)
        # (a sweep's runs keep the signals' defaults, and a launcher's handlers: submitit's in a SLURM job)
        with signals.stop_signals_interrupt() if single else nullcontext():
            return train_seeds(cfg, run_dir, on_epoch=trial.reporter_for(cfg, run_dir))
    except KeyboardInterrupt as err:
        if not single:
            raise
        how = "interrupted" if signals.signal_name(err) == "SIGINT" else f"stopped by {signals.signal_name(err)}"
        print(f"error: {_interrupted(cfg, run_dir, how)}", file=sys.stderr)
        sys.exit(signals.exit_status(err))
    except Exception as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            err = _as_user_error(err, run_dir)
            if not isinstance(err, UserError):
                raise
            if locks.holds(run_dir):  # another process's run in progress is not this command's to clean up
                _remove_if_only_hydra_files(run_dir)
            exit_with(err)
        if immutable.is_refusal(err):
            _refused_in_sweep(cfg, run_dir, err)
            raise
        # In a sweep, the sweeper records the error and goes on; the run directory says what happened.
        trial.record_failure(cfg, run_dir, err)
        raise
    finally:
        locks.release(run_dir)


def _overrides(args: list[str]) -> list[str] | None:
    """The config overrides on a command line, without Hydra's own flags and their values; None when the
    command line may bring config groups from elsewhere (hydra.searchpath, --config-dir), which the checks below
    cannot see."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    try:
        known, _ = get_args_parser().parse_known_args(args)
    except SystemExit:
        return []  # a malformed flag: Hydra reports it
    if known.config_dir or any(arg.startswith("hydra.searchpath") for arg in known.overrides):
        return None
    return known.overrides


def _parsed(args: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = _overrides(args)
    if not overrides:
        return []
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return []  # a syntax error: Hydra's own message says where


def unparsable_secret(args: list[str]) -> str | None:
    """Hydra's parse error quotes the whole command line: an override it cannot parse (an unquoted URL with a
    query, `key=http://h/?token=S`) would print its secret. Name it masked instead, and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in _overrides(args) or []:
        if credentials.masked_override(override) == override:
            continue
        try:
            parser.parse_overrides([override])
        except HydraException:
            key, _, value = credentials.masked_override(override).partition("=")
            return f"config {key}: Hydra cannot parse the value {value} unquoted; quote it: '{key}=\"...\"'"
    return None


def unknown_group_option(args: list[str]) -> str | None:
    """Hydra reports `model=foo` in a dozen lines; this names the group and its options in one."""
    for override in _parsed(args):
        group = CONF_DIR / override.key_or_group
        # hydra/* groups also hold options registered by plugins, which have no file here.
        if override.is_delete() or not group.is_dir() or override.key_or_group.startswith("hydra/"):
            continue
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                continue  # interval(...) over a group: Hydra says what is wrong
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        # Options may sit in subfolders (method=at_lora_budget/vera).
        choices = {path.relative_to(group).with_suffix("").as_posix() for path in group.rglob("*.yaml")}
        if override.key_or_group == "method":  # a method registered from outside the package has no YAML here
            choices |= set(methods.names())
        choices = sorted(choices)
        for option in values:
            if option not in choices and option != "null":
                return f"unknown {override.key_or_group} '{option}'; choose from {', '.join(choices)}"
    return None


def unknown_key_override(args: list[str]) -> str | None:
    """A key the schema lacks, named in one line with the key it likely meant, before Hydra writes anything.

    `+lora.rnk=8` (what Hydra's own message for `lora.rnk=8` suggests) would otherwise add a key that no code
    reads: the run trains at rank 4. config.validate refuses such keys in the composed config too; this check
    comes first, so that nothing is written (Hydra writes .hydra/ before the run starts)."""
    parsed = _parsed(args)
    chosen = [o.get_value_element_as_str() for o in parsed if o.key_or_group == "method" and not o.is_sweep_override()]
    for override in parsed:
        key = override.key_or_group
        # Config groups (model=tiny, lora/targets=qv, recipe@_global_=seed, hparams_search=...) and Hydra's own
        # keys are Hydra's to check.
        if override.is_delete() or override.package is not None or "/" in key or (CONF_DIR / key).is_dir():
            continue
        if key == "hydra" or key.startswith("hydra."):
            continue
        problem = unknown_key(key, chosen[-1] if chosen else None)
        if problem:
            return f"config {key}: {problem}"
    return None


def run_dir_under_a_file(args: list[str]) -> str | None:
    """hydra.run.dir=somefile/run fails inside Hydra with a traceback; name the file in one line instead."""
    for override in _overrides(args) or []:
        key, _, value = override.lstrip("+").partition("=")
        # (hydra.sweep.dir: the lora_optuna sweeper names the problem itself, before its first trial)
        if key != "hydra.run.dir" or not value or "${" in value:
            continue
        path = Path(value.strip("'\"")).expanduser()
        for folder in (path, *path.parents):
            if folder.exists() and not folder.is_dir():
                return f"config {key}: {folder} is a file, not a folder; choose another {key}"
    return None


def _output_dir(args: list[str]) -> tuple[str, Path] | None:
    """The key and folder a command writes under: hydra.sweep.dir for a multirun, else hydra.run.dir, as given
    or, when it interpolates (${now:...}), its fixed leading part; None when it cannot be told."""
    overrides = _overrides(args)
    if overrides is None:
        return None
    values = {key.lstrip("+"): value for key, _, value in (item.partition("=") for item in overrides)}
    multirun = "-m" in args or "--multirun" in args or values.get("hydra.mode") == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = values.get(key)
    if value is None:
        hydra_section = yaml.safe_load((CONF_DIR / "config.yaml").read_text()).get("hydra", {})  # not resolved
        value = str(hydra_section.get(key.split(".")[1], {}).get("dir") or "")
    value = value.strip("'\"").split("${", 1)[0]
    return (key, Path(value).expanduser()) if value else None


def unwritable_output_dir(args: list[str]) -> str | None:
    """A run or sweep folder that cannot be made or written (a read-only outputs/, sweep dir or run's parent):
    Hydra's os.mkdir would end in a traceback. A completed run's own read-only folder is let through: its
    re-run is still the no-op, and another config the refusal (see cli: Hydra logs to the console there)."""
    found = _output_dir(args)
    if found is None:
        return None
    key, target = found
    for folder in (target, *target.parents):
        if folder.is_symlink() and not folder.exists():
            return f"config {key}: {folder} is a symbolic link to {os.readlink(folder)}, which does not exist"
        if not folder.exists():
            continue
        if os.access(folder, os.W_OK) or (folder == target and key == "hydra.run.dir"):
            return None
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        return f"config {key}: {folder} {why}, so {target} cannot be written; choose another {key}"
    return None


def cli() -> None:
    args = sys.argv[1:]
    checks = (
        unparsable_secret,
        unknown_group_option,
        unknown_key_override,
        run_dir_under_a_file,
        unwritable_output_dir,
    )
    problem = next((found for check in checks if (found := check(args))), None)
    if problem:
        exit_with(UserError(problem))
    found = _output_dir(args)
    chosen = any(arg.lstrip("+").startswith("hydra/job_logging=") for arg in args)
    if found and found[0] == "hydra.run.dir" and found[1].is_dir() and not os.access(found[1], os.W_OK) and not chosen:
        # Hydra's train.log handler would fail ("Unable to configure handler 'file'") before the run could answer
        # with its no-op or refusal: in a run directory this process cannot write, Hydra logs to the console only.
        sys.argv.append("hydra/job_logging=stdout")
    try:  # no model= given: the default chooses one from the data, as if the command had named it
        sys.argv += choose_model.chosen_overrides(args, _overrides(args))
    except UserError as err:
        exit_with(err)
    try:
        main()
    except KeyboardInterrupt as err:  # a sweep's (a single run says more in main itself)
        print(
            f"error: sweep interrupted ({signals.signal_name(err)}); the runs it finished are kept in their run "
            "directories (an Optuna study records the interrupted trial as FAIL)",
            file=sys.stderr,
        )
        sys.exit(signals.exit_status(err))


if __name__ == "__main__":
    # Run the module's importable copy, not this `__main__` one: launchers that send the task function to other
    # processes (joblib, submitit and so SLURM) would pickle a `__main__` function by value, with every global it
    # reaches, and fail on the first one that does not pickle.
    from sentiment_lora.train import cli as importable_cli

    importable_cli()
