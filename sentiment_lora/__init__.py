"""sentiment-lora: a Hydra-configured sweep harness for LoRA fine-tuning of encoders on binary sentiment."""

__version__ = "0.1.0"
