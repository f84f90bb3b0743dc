"""Test-only: hold a process in the middle of its write, so that a second process meets it there without any race
or sleep (tests/test_locks.py). Imported at start-up by a Python process whose PYTHONPATH has this folder.

SLORA_TEST_HOLD=<gate folder>:<where>: where is `checkpoint` (right after a run's first checkpoint is on disk) or
`export` (when an export starts writing its temporary folder, its lock held). There the process creates
<gate folder>/held and waits until the test creates <gate folder>/go (for at most 300 s), then goes on."""

import os
import time
from pathlib import Path

HOLD = os.environ.get("SLORA_TEST_HOLD")

if HOLD:
    gate, where = HOLD.rsplit(":", 1)

    def _hold() -> None:
        if (Path(gate) / "held").exists():
            return  # once per process
        (Path(gate) / "held").write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + 300
        while not (Path(gate) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    if where == "checkpoint":
        import sentiment_lora.rundir.checkpoint

        save = sentiment_lora.rundir.checkpoint.Checkpoint.save

        def save_then_hold(self, *args, **kwargs):
            save(self, *args, **kwargs)
            if self.enabled:
                _hold()

        sentiment_lora.rundir.checkpoint.Checkpoint.save = save_then_hold
    elif where == "export":
        # write_export encodes the probe reviews first, through the data pipeline's module attribute: patched here,
        # it holds whichever module runs the export.
        import sentiment_lora.data.pipeline

        encode = sentiment_lora.data.pipeline.encode

        def hold_then_encode(*args, **kwargs):
            _hold()
            return encode(*args, **kwargs)

        sentiment_lora.data.pipeline.encode = hold_then_encode

# Only one sitecustomize is imported: run the bf16 one too when the suite simulates a CPU kind.
if os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16") in ("0", "1"):
    exec((Path(__file__).resolve().parents[1] / "bf16_site" / "sitecustomize.py").read_text())
