"""The ``lrenv`` command: ``lrenv COMMAND ARGS...`` runs ``python -m lrenv.agents.<command> ARGS...``.

Commands: train, evaluate, demo, sweep, ship_default, surface, distill, evolve, probe.
"""

from __future__ import annotations

import importlib
import os
import sys

#: Command -> what it does (each is a module of this package with a ``main(argv)``).
COMMANDS = {
    "train": "train an SB3 agent to choose learning rates; writes a run folder",
    "evaluate": "compare learned schedules with tuned classic ones: tables, CSV, plots",
    "demo": "the main job: train PPO, then compare it and the default policy with tuned baselines",
    "sweep": "Ray Tune over agent hyperparameters, env settings and seeds, with early stopping (ASHA)",
    "ship_default": "copy a trained run's policy into the package as the default policy",
    "surface": "map a task's (epoch, LR) -> convergence-rate surface and the three aims; fit Psi by a loss-curve law and a network",
    "distill": "distil a policy (or a law fit) into a closed-form formula by symbolic regression (DAgger + Operon)",
    "evolve": "meta-learn the constants of a closed-form Psi family with CMA-ES on a training distribution",
    "probe": "score hand-set formulas on a training distribution's variants, on seeds of their own (from 90,000)",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
        print("usage: lrenv COMMAND [ARGS...]   (lrenv COMMAND --help for its options)\n\ncommands:\n" + "\n".join(lines))
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        sys.exit(f"lrenv: unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: see the scripts' own note
    module = importlib.import_module(f"lrenv.agents.{command}")
    module.main(rest)


if __name__ == "__main__":
    main()
