"""Ship a trained run inside the package: copy its plain-data policy files, as the shipped RL policy ``"ars"``.

Usage::

    python -m agents.train --config agents/configs/default.yaml --seed 0     # ~20 minutes on 2 CPU cores
    python -m agents.ship_default runs/<that run>                            # -> lrenv/policies/ars/

(The default Ψ itself, ``lrenv/policies/default/``, is a formula shipped by ``agents.evolve --ship``.)

Copies ``policy.json``, ``policy.safetensors``, ``normalization.json`` (when the run has one)
and ``config.json`` (with the run's own folder path dropped), after loading the run with
:func:`lrenv.load_policy` to check that it is complete. The files hold numbers and JSON only:
``lrenv.load_policy("ars")`` runs no code from them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from lrenv.policy import ARS_POLICY, ARS_POLICY_DIR, load_policy
from lrenv.run_dir import RunDir, atomic_path, write_json

#: The most the shipped files may weigh together.
MAX_BYTES = 1_000_000


def ship(run_dir: Path, to: Path = ARS_POLICY_DIR) -> list[Path]:
    """Copy the run's policy into ``to``; returns the files written.

    Raises:
        ValueError: The run's policy is incomplete, damaged, or larger than :data:`MAX_BYTES`.
    """
    policy = load_policy(run_dir)  # every check of a policy folder, before anything is copied
    names = [RunDir.POLICY, RunDir.WEIGHTS] + ([RunDir.NORMALIZATION] if policy.normalization is not None else [])
    size = sum((run_dir / n).stat().st_size for n in names)
    if size > MAX_BYTES:
        raise ValueError(f"the policy of {run_dir} takes {size} bytes; a shipped policy must stay under {MAX_BYTES}")
    to.mkdir(parents=True, exist_ok=True)
    for stale in to.glob("*.json"):
        if stale.name not in names + [RunDir.CONFIG]:
            stale.unlink()
    written = []
    for name in names:
        with atomic_path(to / name) as tmp:
            shutil.copyfile(run_dir / name, tmp)
        written.append(to / name)
    config = {k: v for k, v in policy.config.items() if k not in ("run_dir",)}
    config["name"] = ARS_POLICY
    config["shipped_from"] = "/".join(run_dir.resolve().parts[-2:]) if run_dir.name == RunDir.BEST else run_dir.name
    with atomic_path(to / RunDir.CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    written.append(to / RunDir.CONFIG)
    return written


def ship_formula(formula_file: Path, to: Path, name: str, **updates: Any) -> Path:
    """Install a ``formula.json`` in the package folder ``to`` under the shipped ``name`` (atomically)."""
    data = json.loads(formula_file.read_text())
    data.update(name=name, **updates)
    to.mkdir(parents=True, exist_ok=True)
    write_json(to / "formula.json", data)
    return to / "formula.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run folder of agents.train")
    parser.add_argument("--to", default=str(ARS_POLICY_DIR), help="where the shipped RL policy lives (default: inside the package)")
    args = parser.parse_args(argv)
    try:
        written = ship(Path(args.run_dir), Path(args.to))
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print("Wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
