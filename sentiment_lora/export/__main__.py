"""`python -m sentiment_lora.export`: the export command (cli.py)."""

from sentiment_lora.export.cli import main

main()
