"""A run directory that holds a run is never rewritten by another configuration, and a finished run not at all.

`claim` runs before a job trains anything. A directory "holds a run" once it has a `metrics.json` (any status) or
a checkpoint, itself or in a `seed_<n>/` replicate. Then the same configuration (by `results.config_digest`,
which leaves out the keys that cannot change numbers) does nothing for a complete, pruned or dry_run record and
returns what it recorded, so a killed grid re-run into its sweep directory trains only the missing points; it
resumes a checkpoint and retries a failed record. Another configuration is refused in one line.

The run's own config, `run.yaml`, is written here when the run starts and never rewritten: the config digest, the
command-line overrides and the resolved config. predict, export and resume read it, not `.hydra/`, which Hydra would
rewrite on every command into the directory. Hydra's files are kept out of a directory that holds a run (the
`sentiment_lora.hydra_subdir` resolver below, which conf/config.yaml gives `hydra.output_subdir`), so a refused
or no-op command leaves `.hydra/` as the run's first command wrote it.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentiment_lora import credentials, locks
from sentiment_lora.errors import UserError
from sentiment_lora.rundir import record as results
from sentiment_lora.rundir.files import atomic_target

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run.yaml"
CHECKPOINT_FILE = "checkpoint.safetensors"  # rundir/checkpoint.py's (which imports torch): named here too
SEED_DIR = re.compile(r"seed_(\d+)")
HEADER = (
    "# This run's own config, written by sentiment-lora when the run started and never rewritten: predict, export\n"
    "# and resume read it. digest: results.config_digest (keys that cannot change numbers left out).\n"
)


class Refused(UserError):
    """A command refused before it wrote anything into the run directory (its train.log included)."""


class RunExists(Refused):
    """A command into a directory that holds a run of another configuration: refused, the directory untouched."""


def is_refusal(error: BaseException) -> bool:
    """A refused command (another configuration's run, a damaged checkpoint, another process's directory): the
    directory is not this command's to write, not even a failed record or a log line."""
    return isinstance(error, (Refused, locks.InUse))


def seed_runs(run_dir: Path) -> list[Path]:
    """The seed_<n>/ replicates of a seeds=[...] run, by seed."""
    found = [path for path in Path(run_dir).glob("seed_*") if SEED_DIR.fullmatch(path.name) and path.is_dir()]
    return sorted(found, key=lambda path: int(SEED_DIR.fullmatch(path.name).group(1)))


def holds_run(run_dir: Path) -> bool:
    """Whether the directory has a record or a checkpoint, itself or in a seed_<n>/ replicate."""
    run_dir = Path(run_dir)
    return any(
        (where / name).exists()
        for where in (run_dir, *seed_runs(run_dir))
        for name in (results.METRICS_FILE, CHECKPOINT_FILE)
    )


def hydra_subdir() -> str | None:
    """hydra.output_subdir: `.hydra`, or None (Hydra then writes no files) in a directory that holds a run or that
    another process is writing. Hydra asks for it before it writes .hydra/ and runs the job, so the job's lock on
    its run directory (locks.py) is taken here: a second command into a run in progress finds it taken before it
    could write a byte there (the job then refuses itself, train.main)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        output_dir = HydraConfig.get().runtime.output_dir
    except (ValueError, OmegaConfBaseException):
        return ".hydra"  # composed outside a job (tests, --cfg): nothing to protect
    if not output_dir:
        return ".hydra"
    try:
        locks.acquire(Path(output_dir))
    except locks.InUse:
        return None
    return None if holds_run(Path(output_dir)) else ".hydra"


def register_resolver() -> None:
    if not OmegaConf.has_resolver("sentiment_lora.hydra_subdir"):
        OmegaConf.register_resolver("sentiment_lora.hydra_subdir", hydra_subdir)


def read_own_config(run_dir: Path) -> DictConfig | None:
    """The run's run.yaml, or None for a run written before it existed."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        own = OmegaConf.load(path)
    except (OSError, ValueError, OmegaConfBaseException) as err:
        raise UserError(f"{path}: cannot read the run's own config ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(own, DictConfig) or "config" not in own or "digest" not in own:
        raise UserError(f"{path}: not a sentiment-lora run config (no digest or config)")
    return own


def _command_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _write_own_config(run_dir: Path, cfg) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    # Resolved, an `${oc.env:...}` tracking URI would bring its password here: every URL is written masked (the
    # digest is taken from the config itself, so a resume still compares what was run).
    overrides = [credentials.masked_override(item) for item in _command_overrides()]
    own = {"digest": results.config_digest(cfg), "overrides": overrides, "config": credentials.masked_values(plain)}
    with atomic_target(Path(run_dir) / RUN_CONFIG_FILE) as tmp:
        tmp.write_text(HEADER + OmegaConf.to_yaml(OmegaConf.create(own)))


def _differences(recorded: DictConfig, cfg) -> str:
    """The keys whose values differ, as `key old -> new` (the first four), for the refusal's one line."""

    def flat(node, prefix=""):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    ignored = set(results.NOT_RESULTS) - {"seeds"}  # the digest leaves seeds out, claim compares them itself
    old = flat(OmegaConf.to_container(recorded, resolve=True))
    new = flat({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})
    changed = [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not any(key == i or key.startswith(f"{i}.") for i in ignored)
    ]
    return "; ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")


def _refuse(run_dir: Path, what: str, detail: str, resumable: bool) -> RunExists:
    resume = f"to resume it, re-run the overrides in {run_dir / RUN_CONFIG_FILE}; " if resumable else ""
    return RunExists(
        f"run directory {run_dir}: holds {what} of another configuration{detail}, and a run is never overwritten; "
        f"{resume}to start over, give this command a new hydra.run.dir (hydra.sweep.dir in a sweep) or move "
        f"{run_dir} aside"
    )


def _recorded_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / results.METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = results.read_metrics(run_dir)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path}: cannot read the run's record ({err}); move the directory aside to start over"
        ) from None
    return record if isinstance(record, dict) else None


def _check_checkpoint(path: Path) -> None:
    """A resume reads the whole checkpoint here, before the run logs or writes anything: a damaged one is refused
    with the directory untouched (the run would find it only after its data and model were set up)."""
    from sentiment_lora.rundir.checkpoint import read_checkpoint

    try:
        read_checkpoint(path)
    except UserError as err:
        raise Refused(str(err)) from None


def claim(cfg, run_dir: Path) -> float | tuple[float, ...] | None:
    """Before a job (or one seed of it) trains in run_dir: the recorded objectives when run_dir already holds this
    configuration's finished run (nothing is written), None when the job should go ahead (run.yaml then exists).
    Raises RunExists when run_dir holds a run of another configuration."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        _write_own_config(run_dir, cfg)  # a fresh start (a stale run.yaml of a run that never got going included)
        return None
    own = read_own_config(run_dir)
    record = _recorded_status(run_dir)
    if record is not None and record.get("status") not in results.STATUSES:  # e.g. the TF-IDF baseline's
        status = record.get("status")
        raise RunExists(
            f"run directory {run_dir}: holds a {status!r} record, not a run to resume; use a new hydra.run.dir"
        )
    what = f"a {record.get('status')} run" if record else "a started run (a checkpoint or seed_<n>/ runs)"
    resumable = own is not None and (record is None or record.get("status") == "failed")
    if own is not None:
        seeds = OmegaConf.to_container(cfg, resolve=True).get("seeds")  # config_digest leaves seeds out
        same = own.digest == results.config_digest(cfg) and OmegaConf.to_container(own.config).get("seeds") == seeds
        if not same:
            diff = _differences(own.config, cfg)
            raise _refuse(run_dir, what, f" ({diff})" if diff else "", resumable)
    elif record is not None and record.get("config_id") is not None:
        # A run written before run.yaml existed: its record's config_id (the digest without trainer.seed) and seed.
        if (record.get("config_id"), record.get("seed")) != (results.config_id(cfg), cfg.trainer.seed):
            raise _refuse(run_dir, what, "", resumable)
    elif (run_dir / CHECKPOINT_FILE).exists():
        from sentiment_lora.rundir.checkpoint import checkpoint_digest  # torch and safetensors: only when there is one

        if checkpoint_digest(run_dir / CHECKPOINT_FILE) != results.config_digest(cfg):
            raise _refuse(run_dir, what, "", resumable)
    if record is not None and record.get("status") == "dry_run":
        from sentiment_lora import methods

        method = methods.of(cfg)
        facts = record.get(method.record_section)
        print(method.counts_line(cfg, record["params"], facts if isinstance(facts, dict) else None))  # as printed
        return math.nan
    if record is not None and record.get("status") in ("complete", "pruned"):
        value = results.objectives_of(record, cfg.objectives)
        scores = [f"{split} accuracy {record[split]['accuracy']:.4f}" for split in ("val", "test") if record.get(split)]
        log.info(
            "%s already holds this configuration's %s run%s: nothing to do (a new hydra.run.dir starts over)",
            run_dir,
            record["status"],
            f" ({', '.join(scores)})" if scores else "",
        )
        return value
    if cfg.trainer.checkpoint and (run_dir / CHECKPOINT_FILE).exists():
        _check_checkpoint(run_dir / CHECKPOINT_FILE)  # a resume
    if own is None:
        _write_own_config(run_dir, cfg)  # an older run's resume or retry: from now on it has its own config
    return None
