"""Imported at start-up by the Python subprocesses of a test run under SENTIMENT_LORA_TEST_AUTO_BF16=1
(tests/conftest.py puts this folder first on their PYTHONPATH): they resolve trainer.precision=auto as a CPU with
native bf16 would, like the test process itself."""

import sentiment_lora.runtime

sentiment_lora.runtime.cpu_supports_bf16 = lambda: True
