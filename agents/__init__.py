"""Runnable scripts, installed as ``lrenv.agents``: ``python -m agents.X`` from the repository,
``python -m lrenv.agents.X`` or ``lrenv X`` anywhere, for X in demo, train, evaluate."""
