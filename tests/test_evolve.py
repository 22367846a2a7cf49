import numpy as np
import pytest

from lrenv import load_policy
from lrenv.agents import evolve


def _config(tmp_path):
    path = tmp_path / "dist.yaml"
    path.write_text(
        "populations:\n"
        "  - {task: Digits-MLP-v0, n_envs: 1, task_config: {epochs: 3}}\n"
        "  - {task: Digits-MLP-v0, n_envs: 1, task_config: {epochs: 4, optimizer: adam, default_lr: 0.001, lr_range: [1.0e-5, 0.1]}}\n"
        "env: {relative_factor: 30.0, base_lr_spread: 10.0}\n"
    )
    return path


def test_the_family_maps_the_unit_box_onto_its_constants():
    constants = evolve.to_constants(evolve.to_unit(evolve.START))
    assert constants == pytest.approx(evolve.START)
    assert evolve.to_constants(np.full(len(evolve.BOUNDS), 2.0)) == {k: hi for k, (_, hi) in evolve.BOUNDS.items()}
    # the start is the base LR, constant: ratio 1 whatever the losses
    policy = load_policy_of(evolve.expression(evolve.START))
    assert policy.model.formula(np.random.default_rng(0).normal(size=(5, 8))) == pytest.approx(np.ones(5))


def load_policy_of(text):
    from lrenv.formula import formula_policy

    return formula_policy(text, relative_factor=30.0)


def test_candidates_are_ranked_per_variant():
    scores = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])
    np.testing.assert_allclose(evolve.centred_ranks(scores), [-0.5, 0.25, 0.25])


def test_search_writes_a_loadable_formula_reproducibly_and_ships_it(tmp_path, monkeypatch):
    out = tmp_path / "evolve"
    argv = ["--config", str(_config(tmp_path)), "--generations", "2", "--popsize", "4", "--seeds", "1", "--eval-every", "1", "--eval-seeds", "1"]
    monkeypatch.setattr(evolve, "DEFAULT_POLICY_DIR", tmp_path / "package")
    fit = evolve.main([*argv, "--workers", "0", "--out", str(out), "--ship"])
    again = evolve.main([*argv, "--workers", "0", "--out", str(tmp_path / "again")])
    assert again == {**fit, "wall_time_s": again["wall_time_s"]}  # the same seed: the same search
    shipped = load_policy(tmp_path / "package")
    assert shipped.name == "default" and shipped.model.formula == load_policy(out / "formula.json").model.formula
    policy = load_policy(out / "formula.json")
    assert policy.model.relative_factor == 30.0 and policy.tasks == ["Digits-MLP-v0"]
    assert fit["inner_epochs"] == 2 * (4 * 3 + 4 * 4) + 2 * (3 + 4)  # candidates, then one validation per generation
    rows = (out / "generations.csv").read_text().splitlines()
    assert len(rows) == 3 and "validation_return" in rows[0] and "nan" not in rows[1] + rows[2]  # validated every generation


def test_bad_settings_are_named(tmp_path):
    assert evolve.bounds(["sharp=0,4"])["sharp"] == (0.0, 4.0)
    with pytest.raises(ValueError, match="unknown constant 'speedy'"):
        evolve.parse_args(["--bound", "speedy=0,1"])
    with pytest.raises(ValueError, match="need 0.0 <= LO < HI <= 20.0"):
        evolve.parse_args(["--bound", "sharp=0,40"])
    with pytest.raises(ValueError, match="--popsize must be at least 4"):
        evolve.parse_args(["--popsize", "2"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("env: {}\n")
    with pytest.raises(ValueError, match="names no populations"):
        evolve.read_distribution(str(empty))
