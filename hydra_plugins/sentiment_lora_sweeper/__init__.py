"""sentiment-lora's Optuna sweeper plugin (see sweeper.py). `hydra_plugins` itself is a namespace package."""
