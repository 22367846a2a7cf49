import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lrenv.agents import probe


def _config(tmp_path):
    path = tmp_path / "dist.yaml"
    path.write_text(
        "populations:\n"
        "  - {task: Digits-MLP-v0, task_config: {epochs: 3}}\n"
        "  - {task: Digits-MLP-v0, task_config: {epochs: 2, optimizer: adam, default_lr: 0.001, lr_range: [1.0e-5, 0.1]}}\n"
        "env: {relative_factor: 30.0, base_lr_spread: 10.0}\n"
    )
    return str(path)


def _formulas(tmp_path, entries):
    path = tmp_path / "probes.json"
    path.write_text(json.dumps(entries))
    return str(path)


def test_probe_pairs_its_formulas_on_seeds_of_their_own_and_writes_them(tmp_path, capsys):
    entries = {"flat": "exp(0*lr_ratio)", "same": "exp(0*lr_ratio)", "halving": "exp(lr_ratio - 0.7)", "shipped": "default"}
    out = tmp_path / "probe.csv"
    argv = ["--config", _config(tmp_path), "--formulas", _formulas(tmp_path, entries), "--seeds", "2", "--workers", "0", "--out", str(out)]
    rows = probe.main(argv)
    assert [(r["variant"], r["formula"]) for r in rows] == [(v, f) for v in (0, 1) for f in entries]
    by = {(r["variant"], r["formula"]): r for r in rows}
    for v in (0, 1):
        assert by[(v, "same")] == {**by[(v, "flat")], "formula": "same"}  # one population: the same episodes
        assert by[(v, "halving")]["return_base"] != by[(v, "flat")]["return_base"]
        assert by[(v, "flat")]["return_set_off"] != by[(v, "flat")]["return_base"]  # set off: other base LRs
    assert by[(1, "shipped")]["return_base"] != by[(1, "flat")]["return_base"]  # the default, with its own features
    assert [r["formula"] for r in csv.DictReader(out.open())] == [r["formula"] for r in rows]
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MEAN")]
    assert "against" not in summary[0] and "+0.0000 ± 0.0000 against flat over 2 seeds" in summary[1]  # the same episodes
    halving = np.mean([(by[(v, "halving")]["return_base"] + by[(v, "halving")]["return_set_off"]) / 2 for v in (0, 1)])
    flat = np.mean([(by[(v, "flat")]["return_base"] + by[(v, "flat")]["return_set_off"]) / 2 for v in (0, 1)])
    assert f"{halving - flat:+.4f} ± " in summary[2] and all(line.endswith("of 8 runs") for line in summary)
    assert all(isinstance(r["overshoots_base"], int) and 0 <= r["overshoots_set_off"] <= 2 for r in rows)
    again = probe.main([*argv[:-2], "--variants", "1"])
    assert again == [r for r in rows if r["variant"] == 1]  # the same seeds, whatever else is played


def test_an_overshoot_is_an_epoch_more_than_twice_the_best_before_it():
    assert probe.overshot([2.3, 0.3, 0.7, 0.2])  # 0.7 > 2 · 0.3
    assert not probe.overshot([2.3, 0.3, 0.6, 0.2])  # twice the best is not more than twice
    assert not probe.overshot([2.3, 4.0])  # the untrained loss is the first best: 4.0 < 2 · 2.3
    assert probe.overshot([2.3, 0.3, float("nan")]) and probe.overshot([2.3, 0.3, float("inf")])  # a loss that went non-finite


def test_the_paired_difference_is_over_seeds():
    first = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])  # [episodes, seeds]
    mine = first + np.array([[0.1, 0.3, 0.2], [0.1, 0.1, 0.2]])  # per seed +0.1, +0.2, +0.2
    diff, se = probe.paired_difference(mine, first)
    assert diff == pytest.approx(0.5 / 3) and se == pytest.approx(np.std([0.1, 0.2, 0.2], ddof=1) / np.sqrt(3))


@pytest.mark.parametrize(
    ("entries", "extra", "message"),
    [
        ({"bad": "exp(lr_ratio +)"}, [], "--formulas 'bad'"),
        ({"bad": "exp(no_such_feature)"}, [], "--formulas 'bad'"),
        ({"missing": "nowhere/formula.json"}, [], "--formulas 'missing'"),
        ({"flat": "exp(0*lr_ratio)"}, ["--variants", "2"], "the config has 2 populations"),
        ({"flat": "exp(0*lr_ratio)"}, ["--variants", "one"], "--variants"),
        ({"flat": "exp(0*lr_ratio)"}, ["--seeds", "0"], "--seeds must be at least 1"),
        ([], [], "expected a JSON object"),
    ],
)
def test_probe_names_bad_input(tmp_path, entries, extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        probe.main(["--config", _config(tmp_path), "--formulas", _formulas(tmp_path, entries), "--workers", "0", *extra])


def test_probe_needs_its_formulas():
    with pytest.raises(ValueError, match="--formulas is required"):
        probe.main([])


PROBE_FILES = sorted((Path(__file__).parents[1] / "agents" / "configs" / "probes").glob("*.json"))


@pytest.mark.parametrize("path", PROBE_FILES, ids=lambda p: p.name)
def test_every_committed_probe_file_still_parses(path):
    """agents/PSI.md's probe commands name these files: each formula must read in the grammar of today."""
    formulas = probe.read_formulas(str(path), "relative_peak")
    assert len(formulas) >= 2, "a probe compares formulas: at least two"


def test_the_probe_files_are_found():
    assert len(PROBE_FILES) >= 14
