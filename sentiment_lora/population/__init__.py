"""Sweep trials trained together: a population of LoRA trials over one frozen encoder, in one process.

`train_together(jobs)` takes a batch of sweep jobs (what a launcher gets from a sweeper: `hydra/launcher=population`,
hydra_plugins/sentiment_lora_sweeper/population_launcher.py) and trains the trials that can share one encoder
as one population (stacked.py: every frozen module once per step over the members' stacked batches; loop.py: each
member's own data order, optimizer, schedule, clipping, selection, pruning). Trials join when their model, data,
lengths, batch sizes, frozen layers, device and precision agree; the rest run alone, with a log line that says why.

Each member is set up (run.set_up) and recorded (run.finish) exactly as a single run: its run directory,
metrics.json, adapter, predictions, checkpoints and tracking are a single run's, and predict/export cannot tell
them apart. What differs is the random stream of dropout (one global stream for the stacked batch, not one per
run), so with dropout on a member's numbers differ from its single run's as another seed's would; with dropout
off (and fp32) they are the single run's within float rounding (tests/test_population.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sentiment_lora import locks, methods, tracking, trial
from sentiment_lora.config import validate
from sentiment_lora.population import memory
from sentiment_lora.population.logs import member_context
from sentiment_lora.population.stacked import frozen_names
from sentiment_lora.run import Run, finish, fit_alone, set_up, train_seeds
from sentiment_lora.rundir import claim as immutable

log = logging.getLogger(__name__)


def why_alone(cfg) -> str | None:
    """Why a trial cannot join a population, from its config alone; None if it can."""
    if cfg.dry_run:
        return "dry_run counts parameters only"
    if cfg.get("seeds"):
        return "seeds= trains several seeds one after another in one job"
    return methods.of(cfg).population_refusal(cfg)


def join_key(run: Run) -> tuple:
    """What members of one population must share: the frozen encoder and everything that shapes its input."""
    cfg = run.cfg
    encoder = run.weights or f"random init, trainer.seed={cfg.trainer.seed}"
    return (encoder, OmegaConf.to_yaml(cfg.model), OmegaConf.to_yaml(cfg.data), cfg.trainer.max_length,
            cfg.trainer.batch_size, cfg.trainer.eval_batch_size, run.frozen.mode, run.classifier.cached_depth,
            tuple(sorted(frozen_names(run))), str(run.device), str(run.dtype), len(run.batches))  # fmt: skip


JOINED = ("model, data, trainer.max_length, trainer.batch_size, trainer.eval_batch_size, frozen layers, device and "
          "precision")  # fmt: skip


class _Job:
    def __init__(self, index: int, cfg, run_dir: Path, on_epoch=None, job_context=None):
        self.index, self.cfg, self.run_dir, self.on_epoch = index, cfg, Path(run_dir), on_epoch
        self.job_context = job_context  # the launcher's: Hydra's state as this job's own while its code runs
        self.label = f"#{index} ({run_dir})"
        self.tracked: AbstractContextManager | None = None
        self.hook = None
        self.run: Run | None = None
        self.outcome: object = None
        self.random_state: dict | None = None  # torch's streams where this job's set-up left them

    @contextmanager
    def context(self) -> Iterator[None]:
        with member_context(self.index), self.job_context() if self.job_context else nullcontext():
            yield

    def end(self, error: BaseException | None = None, value=None) -> None:
        """Close the job's tracking with its outcome, and record a failure as a sweep job's."""
        if self.tracked is not None:
            tracked, self.tracked = self.tracked, None
            with self.context():
                try:
                    if error is None:
                        tracked.__exit__(None, None, None)
                    else:
                        tracked.__exit__(type(error), error, error.__traceback__)
                except Exception as problem:  # noqa: BLE001 - a logger's error must not cost the run
                    log.error("closing the loggers failed: %s: %s", type(problem).__name__, problem)
        if error is not None:
            with self.context():
                trial.record_failure(self.cfg, self.run_dir, error)
        self.outcome = error if error is not None else value


def train_together(
    jobs: list[tuple], max_eval_rows: int | None = None, memory_budget_mb: int | None = None, stack: bool | None = None
) -> list:
    """Train the jobs, (cfg, run_dir[, on_epoch[, job_context]]) each, in populations where they can join;
    returns each job's objective(s), or the exception it ended with (a pruned trial's TrialPruned, a failed
    one's error). Trials that could join are split into populations that fit `memory_budget_mb` (None: the
    memory available; population/memory.py). `stack` False trains them one after another instead, still over
    one shared frozen encoder; None stacks them on a GPU only (see CPU_STACKING)."""
    pending = [_Job(index, *job) for index, job in enumerate(jobs)]
    joining: list[_Job] = []
    frozen: dict[tuple, dict] = {}  # one copy of each frozen encoder, shared by every member set up over it
    for job in pending:
        with job.context():
            try:
                job.run_dir.mkdir(parents=True, exist_ok=True)  # Hydra's launchers make it; a caller may not
                locks.acquire(job.run_dir)  # as a single job's (Hydra's resolver took it already): one writer
                validate(job.cfg)
                reason = why_alone(job.cfg)
                if reason:
                    log.info("trial %s trains alone: %s", job.label, reason)
                    job.outcome = train_seeds(job.cfg, job.run_dir, job.on_epoch)
                    continue
                recorded = immutable.claim(job.cfg, job.run_dir)
                if recorded is not None:
                    job.outcome = recorded
                    continue
                if job.cfg.trainer.num_threads:
                    torch.set_num_threads(job.cfg.trainer.num_threads)
                job.tracked = tracking.tracked_run(job.cfg, job.run_dir, job.on_epoch)
                job.hook = job.tracked.__enter__()
                job.run = set_up(job.cfg, job.run_dir)
                job.random_state = random_state(job.run.device)
                memory.share_frozen(job.run.classifier, frozen.setdefault(share_key(job.run), {}))
            except Exception as err:  # noqa: BLE001 - this job fails; the batch goes on
                job.end(err)
                continue
        if job.run.checkpoint.enabled and job.run.checkpoint.path.exists():
            with job.context():
                log.info("trial %s trains alone: it resumes from its checkpoint %s", job.label, job.run.checkpoint.path)
            _alone(job)
        else:
            joining.append(job)

    groups: dict[tuple, list[_Job]] = defaultdict(list)
    for job in joining:
        groups[join_key(job.run)].append(job)
    for group in groups.values():
        if len(group) > 1 and not (stack if stack is not None else group[0].run.device.type != "cpu"):
            log.info("%d trials that could join train one after another over one shared encoder: %s",
                     len(group), CPU_STACKING if stack is None else "hydra.launcher.stack=false")  # fmt: skip
            for job in group:
                _alone(job)
            continue
        if len(group) == 1:
            with group[0].context():
                log.info("trial %s trains alone: no other trial of this batch shares its %s", group[0].label, JOINED)
            _alone(group[0])
            continue
        for part in memory.populations(group, [job.run for job in group], memory_budget_mb):
            if len(part) == 1:
                with part[0].context():
                    log.info("trial %s trains alone: a population of 2 would not fit the memory budget", part[0].label)
                _alone(part[0])
            else:
                _together(part, max_eval_rows)
    for job in pending:
        locks.release(job.run_dir)
    return [job.outcome for job in pending]


# Why a CPU does not stack members by default (bench/README.md, "Populations"): one trial's products (16 reviews x
# 256 tokens = 4,096 rows) already fill a few cores, so stacking adds no parallelism, only every member's
# activations at once.
CPU_STACKING = (
    "on a CPU stacked members ran 0.90x as fast as one after another and took 1.83x the memory (4 members, "
    "bench/population.py); hydra.launcher.stack=true stacks them anyway"
)


def share_key(run: Run) -> tuple:
    """What makes two runs' frozen encoder tensors equal: the same weights, architecture, device and dtype."""
    encoder = run.weights or f"random init, trainer.seed={run.cfg.trainer.seed}"
    return encoder, OmegaConf.to_yaml(run.cfg.model), str(run.device), str(run.dtype)


def random_state(device) -> dict:
    """torch's random streams now (the CPU's, and the device's on CUDA)."""
    state = {"cpu": torch.random.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict, device) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _alone(job: _Job) -> None:
    # The other jobs were set up since this one was: its training draws (dropout) start where its own set-up left
    # the streams, as in its single run, so a trial's numbers do not depend on the launcher.
    if job.random_state is not None:
        restore_random_state(job.random_state, job.run.device)
    with job.context():
        try:
            value = finish(job.run, fit_alone(job.run, job.hook), job.hook)
        except Exception as err:  # noqa: BLE001
            job.end(err)
            return
    job.end(value=value)


def _together(group: list[_Job], max_eval_rows: int | None) -> None:
    from sentiment_lora.population.loop import Member, Population

    log.info("population of %d trials (%s) trains together over one encoder", len(group),
             ", ".join(job.label for job in group))  # fmt: skip
    members = [Member(job.run, job.hook, job.label, job.context) for job in group]
    try:
        population = Population(members)
        population.fit()
        tested = population.evaluate(
            [index for index, member in enumerate(members) if member.error is None and not member.stopped],
            "test",
            max_eval_rows,
        )
    except Exception as err:  # noqa: BLE001 - the shared forward failed (out of memory, say): every member fails
        log.error("population failed: %s: %s", type(err).__name__, err)
        for job in group:
            job.end(err)
        return
    for index, (job, member) in enumerate(zip(group, members, strict=True)):
        if member.error is not None:
            job.end(member.error)
            continue
        with job.context():
            try:
                value = finish(job.run, member.fitted(), job.hook, tested=tested.get(index))
            except Exception as err:  # noqa: BLE001 - a pruned member's TrialPruned, or its own failure
                job.end(err)
                continue
        job.end(value=value)
