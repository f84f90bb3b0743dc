"""Test-only fault injection for the cluster tests (tests/test_slurm.py), imported at start-up by the Python
processes of a SLURM job when tests put this folder on PYTHONPATH. The product has no fault hooks: this wraps
Checkpoint.save, so a fault strikes right after an epoch's checkpoint is on disk, as a kill between epochs would.

SLORA_TEST_FAULT="<action>:<run folder name>:<epoch>", action one of
  exit   os._exit(9) (a hard crash: no handler, no result pickle, like SIGKILL or the OOM killer)
  pause  write the job's id to <run dir>/paused and sleep 600 s (the test then cancels, requeues or times out the job)
Each fault strikes once: <run dir>/fault_struck records it, so a requeued job runs on. SLORA_TEST_SLOW (below)
pauses a function instead."""

import os
import time
from pathlib import Path

FAULT = os.environ.get("SLORA_TEST_FAULT")

if FAULT:
    import sentiment_lora.rundir.checkpoint

    action, run_name, at_epoch = FAULT.split(":")
    save = sentiment_lora.rundir.checkpoint.Checkpoint.save

    def save_then_fault(self, epoch, *args, **kwargs):
        save(self, epoch, *args, **kwargs)
        run_dir = self.path.parent
        struck = run_dir / "fault_struck"
        if run_dir.name != run_name or epoch != int(at_epoch) or struck.exists():
            return
        struck.write_text(f"{action} after epoch {epoch}\n")
        if action == "exit":
            os._exit(9)
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array[0]}_{array[1]}" if all(array) else os.environ.get("SLURM_JOB_ID")
        (run_dir / "paused").write_text(f"{job}\n")  # the id squeue and sacct show, as scancel takes it
        time.sleep(600)

    sentiment_lora.rundir.checkpoint.Checkpoint.save = save_then_fault

# SLORA_TEST_SLOW="<module>:<function>:<marker file>": the function writes the marker, then sleeps 600 s before it
# runs, so a test can signal the process at a known point (tests/test_faults.py: SIGTERM inside an export). The
# function is looked up on its module when called (data_lib.encode, say), so a `python -m` copy sees the wrapper.
SLOW = os.environ.get("SLORA_TEST_SLOW")

if SLOW:
    import importlib

    module_name, function_name, marker = SLOW.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)

    def slowed(*args, **kwargs):
        Path(marker).write_text("reached\n")
        time.sleep(600)
        return original(*args, **kwargs)

    setattr(module, function_name, slowed)

# Only one sitecustomize is imported: run the bf16 one too when the suite simulates a CPU kind.
if os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16") in ("0", "1"):
    exec((Path(__file__).resolve().parents[1] / "bf16_site" / "sitecustomize.py").read_text())
