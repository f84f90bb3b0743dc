"""Imported at start-up by the Python subprocesses of a test run under SENTIMENT_LORA_TEST_AUTO_BF16=1 or =0
(tests/conftest.py puts this folder first on their PYTHONPATH): they resolve trainer.precision=auto as a CPU with
(1) or without (0) native bf16 would, like the test process itself."""

import os

import sentiment_lora.runtime

native_bf16 = os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16") == "1"
sentiment_lora.runtime.cpu_supports_bf16 = lambda: native_bf16
