"""Test-only: hold a process in the middle of its write, so that a second process meets it there without any race
or sleep (tests/test_locks.py). Imported at start-up by a Python process whose PYTHONPATH has this folder.

SLORA_TEST_HOLD=<gate folder>: right after a run's first checkpoint is on disk (Checkpoint.save), or while an export
writes its files (export.write_export), the process creates <gate folder>/held and waits until the test creates
<gate folder>/go (for at most 300 s), then goes on."""

import os
import time
from pathlib import Path

GATE = os.environ.get("SLORA_TEST_HOLD")

if GATE:
    import sentiment_lora.checkpoint
    import sentiment_lora.export

    def _hold() -> None:
        gate = Path(GATE)
        if (gate / "held").exists():
            return  # once per process
        (gate / "held").write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + 300
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    save = sentiment_lora.checkpoint.Checkpoint.save

    def save_then_hold(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.enabled:
            _hold()

    write_export = sentiment_lora.export.write_export

    def hold_then_write_export(*args, **kwargs):
        _hold()
        return write_export(*args, **kwargs)

    sentiment_lora.checkpoint.Checkpoint.save = save_then_hold
    sentiment_lora.export.write_export = hold_then_write_export

# Only one sitecustomize is imported: run the bf16 one too when the suite simulates a CPU kind.
if os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16") in ("0", "1"):
    exec((Path(__file__).resolve().parents[1] / "bf16_site" / "sitecustomize.py").read_text())
