import csv
import json

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


def test_probe_pairs_its_formulas_on_seeds_of_their_own_and_writes_them(tmp_path):
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
    again = probe.main([*argv[:-2], "--variants", "1"])
    assert again == [r for r in rows if r["variant"] == 1]  # the same seeds, whatever else is played


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
