"""A completed run as a folder other libraries load: the command (cli, `python -m sentiment_lora.export`)
and the formats (formats)."""
