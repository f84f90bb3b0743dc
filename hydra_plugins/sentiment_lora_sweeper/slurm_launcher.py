"""hydra/launcher=slurm: hydra-submitit-launcher's SLURM launcher, waiting on its jobs one by one.

The plain launcher waits with `[job.results()[0] for job in jobs]`, which has two faults on a real cluster:
- one job that ends without a result (killed hard, out of memory, scancel'ed, past its time limit) raises out of
  the whole batch, so the sweep stops with a traceback and the batch's other trials are lost with it;
- submitit learns that a job is over from `sacct` alone. Where `sacct` gives no final state (accounting off or
  down, or a job id it does not know), a job that died hard is waited on forever.

This launcher submits exactly as the plain one does and then waits on every job itself: a job's outcome is its
result, or its failure as that job's own FAILED return (the sweeper records a FAIL trial and goes on; a grid
reports the job as Hydra does a job that raised). A job that has left SLURM's queue (`squeue`) without a result
and without a final `sacct` state for `lost_after_s` seconds is reported as lost, with what to check.

Kept light to import (Hydra imports plugin modules at start-up): submitit is imported only to launch.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)


class JobLost(RuntimeError):
    """A SLURM job that left the queue with neither a result nor a final state in the accounting."""


@dataclass
class LoraSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.sentiment_lora_sweeper.slurm_launcher.LoraSlurmLauncher"
    # Seconds a job may be gone from squeue with no result and no final sacct state before it counts as lost.
    # submitit asks sacct at most once a minute, so this is more than a minute.
    lost_after_s: int = 120
    # Seconds between two looks at the jobs (the result files; squeue, one call for all the jobs).
    poll_s: float = 2.0


ConfigStore.instance().store(
    group="hydra/launcher", name="lora_slurm", node=LoraSlurmQueueConf, provider="sentiment_lora"
)


def _failed(error: BaseException, overrides: Sequence[str]) -> JobReturn:
    returned = JobReturn(status=JobStatus.FAILED, overrides=list(overrides))
    returned.return_value = error  # JobReturn.return_value re-raises it for the sweeper, as for a job that raised
    return returned


class LoraSlurmLauncher(SlurmLauncher):
    def __init__(self, lost_after_s: int = 120, poll_s: float = 2.0, **params: Any) -> None:
        super().__init__(**params)  # the rest are submitit's, as the plain launcher takes them
        self.lost_after_s, self.poll_s = lost_after_s, poll_s

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        jobs: list[submitit.Job] = []
        map_array = submitit.AutoExecutor.map_array

        # The plain launcher's submission, untouched (executor, parameters, folders), minus its wait: its
        # map_array call hands the jobs here instead.
        def keep_jobs(executor, *args, **kwargs):
            jobs.extend(map_array(executor, *args, **kwargs))
            return []

        submitit.AutoExecutor.map_array = keep_jobs
        try:
            super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = map_array
        log.info("SLURM jobs %s; logs in %s", ", ".join(job.job_id for job in jobs), self.params["submitit_folder"])
        return self._wait(jobs, job_overrides)

    def _wait(self, jobs: list, job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
        returns: dict[int, JobReturn] = {}
        gone_since: dict[int, float] = {}
        while len(returns) < len(jobs):
            queued = _queued_job_ids()
            for index, job in enumerate(jobs):
                if index in returns:
                    continue
                if job.done():
                    returns[index] = self._outcome(job, job_overrides[index])
                elif queued is not None and job.job_id not in queued:
                    since = gone_since.setdefault(index, time.monotonic())
                    if time.monotonic() - since > self.lost_after_s:
                        returns[index] = _failed(
                            JobLost(
                                f"SLURM job {job.job_id} left the queue {self.lost_after_s} s ago, with no result "
                                f"and no final state in the accounting (sacct: {job.state}); check that slurmdbd "
                                f"answers (`sacct -j {job.job_id}`) and read the job's log, {job.paths.stderr}"
                            ),
                            job_overrides[index],
                        )
                        log.error(
                            "SLURM job %s lost: gone from squeue, no result, sacct state %s", job.job_id, job.state
                        )
                else:
                    gone_since.pop(index, None)
            if len(returns) < len(jobs):
                time.sleep(self.poll_s)
        return [returns[index] for index in range(len(jobs))]

    @staticmethod
    def _outcome(job, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as err:  # noqa: BLE001 - submitit's UncompletedJobError, or an unreadable result
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.error("SLURM job %s ended without a result (%s): %s", job.job_id, job.state, first)
            return _failed(err, overrides)


def _queued_job_ids() -> set[str] | None:
    """Ids of the jobs SLURM still knows as queued or running (array tasks one by one), or None if squeue fails:
    then nobody can tell whether a job is gone, and nothing counts as lost."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        listed = subprocess.run(
            [squeue, "--me", "--noheader", "--array", "--format=%i"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(listed.stdout.split()) if listed.returncode == 0 else None
