"""Runnable scripts: ``python -m agents.demo`` (and, as they land, train and evaluate)."""
