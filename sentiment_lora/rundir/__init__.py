"""A run directory: its record (metrics.json, predictions), its claim (run.yaml; never rewritten), its
checkpoint, and a completed run found and checked (completed)."""
