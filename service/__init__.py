"""FastAPI service: `pancreas serve` (see service/main.py, settings.py and docs in README)."""
