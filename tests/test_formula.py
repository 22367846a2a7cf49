"""Closed-form LR formulas: a safe grammar, formula.json, FormulaScheduler, and formulas in the evaluation harness."""

from __future__ import annotations

import csv
import json
import math
import pickle

import numpy as np
import pytest
import torch

import lrenv
from lrenv.evaluation import compare
from lrenv.evaluation import runner as eval_runner
from lrenv.evaluation.protocol import PolicyRef, load_contender, load_schedule_file
from lrenv.formula import FormulaModel, formula_policy, load_formula, read_formula, save_formula
from lrenv.policy import PolicyFileError

COSINE = "0.5*(1 + cos(pi*progress))"
RELATIVE = [f.name for f in lrenv.FEATURE_SETS["relative"]]
# a fixed loss history (epoch 0 first): the observations, and so the ratios, are the same for every base LR
LOSSES = [(2.3, 2.31), (1.2, 1.3), (0.8, 0.95), (0.6, 0.85), (0.5, 0.84), (0.42, 0.86), (0.38, 0.9)]


def random_obs(n: int = 50, seed: int = 0, features: str = "relative") -> np.ndarray:
    spec = lrenv.FEATURE_SETS[features]
    rng = np.random.default_rng(seed)
    low, high = np.array([f.low for f in spec]), np.array([f.high for f in spec])
    return rng.uniform(np.maximum(low, -3), np.minimum(high, 3), size=(n, len(spec))).astype(np.float32)


# -- the grammar ------------------------------------------------------------------------------


def test_formulas_evaluate_vectorised_in_float64():
    obs = random_obs()
    x = {name: obs[:, i].astype(np.float64) for i, name in enumerate(RELATIVE)}
    p, v, s = x["progress"], x["valid_loss"], x["train_loss_spread"]
    cases = {
        COSINE: 0.5 * (1 + np.cos(np.pi * p)),
        "exp(-2*progress) + 0.1*tanh(valid_loss_change)": np.exp(-2 * p) + 0.1 * np.tanh(x["valid_loss_change"]),
        "max(0.1, 1 - progress) ** 2 / sqrt(1 + abs(valid_loss))": np.maximum(0.1, 1 - p) ** 2 / np.sqrt(1 + np.abs(v)),
        "min(square(progress), pow(e, -train_loss_spread), 0.5)": np.minimum(np.minimum(p**2, np.exp(-s)), 0.5),
        "-(-log(2 + sin(generalisation_gap)))": np.log(2 + np.sin(x["generalisation_gap"])),
        "Min(progress, 1) + Abs(-E) - lr_ratio": np.minimum(p, 1) + math.e - x["lr_ratio"],  # sympy's printed names
        "2": np.full(len(p), 2.0),
    }
    for text, expected in cases.items():
        formula = lrenv.Formula(text)
        ratio = formula(obs)
        assert ratio.shape == (50,) and ratio.dtype == np.float64
        np.testing.assert_allclose(ratio, expected, rtol=1e-12, err_msg=text)
    formula = lrenv.Formula.from_string(COSINE)
    assert formula.variables == ("progress",) and formula.operations == 4 and str(formula) == COSINE
    assert lrenv.Formula("-0.5 + -progress").operations == 2  # a sign on a number is part of the number
    assert formula(obs[0]).shape == (1,) and formula.evaluate({"progress": [0.0, 1.0]}).tolist() == pytest.approx([1.0, 0.0])
    minimal = lrenv.Formula("1 - valid_loss*progress", features="minimal")
    assert minimal.variables == ("progress", "valid_loss")
    np.testing.assert_allclose(minimal(np.array([[0.5, 0.4]])), [0.8])
    with np.errstate(all="raise"):  # overflow and invalid values are silent: the caller handles them
        assert np.isnan(lrenv.Formula("log(-1 - progress)")(obs)).all() and np.isinf(lrenv.Formula("exp(1e4*(progress + 1))")(obs)).all()
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        formula(np.zeros((3, 2)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os')", "'__import__' is not an allowed function"),
        ("progress.__class__", "attribute access is not allowed"),
        ("exp.__globals__", "attribute access is not allowed"),
        ("progress[0]", "subscripts are not allowed"),
        ("(lambda: 1)()", "only functions named by a bare name"),
        ("lambda x: x", "lambdas are not allowed"),
        ("[p for p in progress]", "comprehensions are not allowed"),
        ("foo + 1", "unknown name 'foo'"),
        ("log_lr", "a feature of feature set 'standard', not of 'relative'"),
        ("open(progress)", "'open' is not an allowed function"),
        ("progress(1)", "'progress' is a variable, not a function"),
        ("exp", "'exp' is a function"),
        ("exp(progress, 2)", "exp takes 1 argument, got 2"),
        ("exp(x=progress)", "keyword arguments are not allowed"),
        ("'a' + progress", "strings are not allowed"),
        ("True * progress", "booleans are not allowed"),
        ("progress ^ 2", r"the operator '\^' is not allowed \(use \*\* for powers\)"),
        ("progress > 0.5", "comparisons are not allowed"),
        ("1 if progress else 2", "conditional expressions are not allowed"),
        ("1e999", "too large for a float"),
        ("1 +", "not a valid expression"),
        ("", "empty"),
        ("progress + " * 400 + "1", "at most 4000 characters"),
        ("sin(" * 70 + "progress" + ")" * 70, "nested more than 64 levels"),
        ("-" * 3000 + "1", "cannot be parsed"),
    ],
)
def test_the_grammar_refuses_anything_else_and_says_what(text, message):
    with pytest.raises(ValueError, match=message) as info:
        lrenv.Formula(text)
    if "allowed:" in str(info.value):  # grammar errors list what is allowed
        assert "exp(x)" in str(info.value) and "progress, lr_ratio" in str(info.value)


def test_to_sympy_is_the_same_function():
    obs = random_obs(n=20, seed=1)
    for text in (COSINE, "max(0.1, 1 - progress) ** 2 / sqrt(1 + abs(valid_loss)) - 3*lr_ratio", "exp(-train_loss)*min(1, 2*progress) + 2**-3"):
        formula = lrenv.Formula(text)
        expr = formula.to_sympy()
        assert {str(s) for s in expr.free_symbols} == set(formula.variables)
        symbols = {s: str(s) for s in expr.free_symbols}
        for row, value in zip(obs, formula(obs)):
            point = {s: float(row[RELATIVE.index(name)]) for s, name in symbols.items()}
            assert float(expr.evalf(subs=point)) == pytest.approx(value, rel=1e-10)
        again = lrenv.Formula(formula.sympy_str())  # sympy's printout parses back (Min, Max, Abs, E)
        np.testing.assert_allclose(again(obs), formula(obs), rtol=1e-10)
    assert lrenv.Formula(COSINE).sympy_str() == "0.5*cos(pi*progress) + 0.5"
    assert str(lrenv.Formula("9**9**9**9 + progress").to_sympy()) == "progress + oo"  # huge constants: float64's inf, not a hang


# -- formula.json -----------------------------------------------------------------------------


def write(tmp_path, text: str = COSINE, **kwargs):
    task = lrenv.make_task("NoisyQuadratic-v0")
    kwargs.setdefault("tasks", [task.name])
    kwargs.setdefault("task_configs", {task.name: task.config})
    return save_formula(tmp_path / "formula.json", text, **kwargs)


def test_formula_files_round_trip_and_load_as_policies(tmp_path):
    path = write(tmp_path, name="cos", relative_factor=30.0, domain={"epochs": [10, 20]}, fit={"mse": np.float32(0.5), "bad": float("nan")}, source="test")
    data = json.loads(path.read_text())
    assert data["format"] == "lrenv-formula" and data["version"] == 1 and data["variables"] == ["progress"]
    assert data["sympy"] == "0.5*cos(pi*progress) + 0.5" and "\\cos" in data["latex"] and data["fit"] == {"mse": 0.5, "bad": None}
    assert data["task_configs"]["NoisyQuadratic-v0"]["epochs"] == 20 and data["task_configs"]["NoisyQuadratic-v0"]["lr_range"] == [1e-3, 4.0]
    spec = read_formula(path)
    assert spec.formula == lrenv.Formula(COSINE) and spec.name == "cos" and spec.relative_factor == 30.0 and spec.tasks == ("NoisyQuadratic-v0",)
    assert read_formula(tmp_path).formula == spec.formula  # a folder holding formula.json

    policy = lrenv.load_policy(path)  # through load_policy: a .json of format lrenv-formula
    for other in (tmp_path, str(path)):  # a folder with formula.json and no policy.json; a str path
        assert lrenv.load_policy(other).name == "cos"
    assert isinstance(policy.model, FormulaModel) and policy.config["algo"] == "formula" and policy.normalization is None
    env = policy.env_config
    assert (env.features, env.action_mode, env.relative_factor, env.base_shape, env.base_lr_spread) == ("relative", "multiplier", 30.0, "constant", 1.0)
    assert policy.tasks == ["NoisyQuadratic-v0"] and policy.task_config()["epochs"] == 20 and policy.env_kwargs["action_mode"] == "multiplier"
    assert policy.model.observation_space.shape == (8,)
    obs = np.zeros((4, 8), np.float32)
    obs[:, 0] = [0.0, 0.5, 0.9, 1.0]
    ratio = 0.5 * (1 + np.cos(np.pi * obs[:, 0].astype(np.float64)))
    with np.errstate(divide="ignore"):
        expected = np.clip(np.log(ratio) / np.log(30.0), -1, 1)
    actions = policy.predict(obs)
    assert actions.shape == (4, 1) and actions.dtype == np.float32 and actions[-1, 0] == -1.0  # ratio 0: the smallest LR
    np.testing.assert_allclose(actions[:, 0], expected, rtol=1e-6)
    assert policy.predict(obs[1]).shape == (1,)
    clone = pickle.loads(pickle.dumps(policy))  # plain data: travels to worker processes
    np.testing.assert_array_equal(clone.predict(obs), actions)
    model = FormulaModel(lrenv.Formula("progress"), 10.0)
    assert model.actions(np.array([np.nan, -1.0, 0.0, 1e-9, 1.0, 10.0, np.inf])).tolist() == [-1, -1, -1, -1, 0, 1, 1]


def test_the_shipped_formula_loads_by_name(tmp_path, monkeypatch):
    import lrenv.policy as policy_module

    monkeypatch.setattr(policy_module, "FORMULA_POLICY_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing/formula.json"):
        lrenv.load_policy("formula")
    write(tmp_path, name="shipped")
    monkeypatch.setattr(policy_module, "FORMULA_POLICY_DIR", tmp_path)
    assert lrenv.load_policy("formula").name == "shipped"


def edit(change):
    def apply(path):
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return apply


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (edit(lambda d: d.update(format="lrenv-schedule")), PolicyFileError, "not an lrenv formula file"),
        (edit(lambda d: d.update(version=2, lrenv="9.0")), PolicyFileError, "version 2 .written by lrenv 9.0.; this lrenv"),
        (edit(lambda d: d.pop("expression")), PolicyFileError, "lacks 'expression'"),
        (edit(lambda d: d.update(expression="progress.__class__")), PolicyFileError, "expression: .*attribute access"),
        (edit(lambda d: d.update(features="huge")), PolicyFileError, "features must be one of"),
        (edit(lambda d: d.update(variables=["log_lr"])), PolicyFileError, "variables 'log_lr' are not features of feature set 'relative'"),
        (edit(lambda d: d.update(variables=[])), PolicyFileError, "uses 'progress', which variables does not list"),
        (edit(lambda d: d.update(relative_factor=1.0)), PolicyFileError, "relative_factor must be a finite number > 1"),
        (edit(lambda d: d.update(relative_factor="100")), PolicyFileError, "relative_factor must be a finite number > 1"),
        (edit(lambda d: d.pop("task_configs")), PolicyFileError, "task_configs lacks the settings of task 'NoisyQuadratic-v0'"),
        (edit(lambda d: d["task_configs"]["NoisyQuadratic-v0"].pop("epochs")), PolicyFileError, r"task_configs\['NoisyQuadratic-v0'\] lacks epochs"),
        (edit(lambda d: d["task_configs"]["NoisyQuadratic-v0"].update(lr_range=[1, 0.1])), PolicyFileError, "lr_range must be"),
        (edit(lambda d: d.update(fit=[1])), PolicyFileError, "fit must be a JSON object"),
        (edit(lambda d: d.update(factor=3)), PolicyFileError, "unknown field.s. 'factor'"),
        (lambda path: path.write_text('{"format": "lrenv-fo'), PolicyFileError, "not valid JSON"),
        (lambda path: path.unlink(), FileNotFoundError, "formula.json does not exist"),
    ],
)
def test_damaged_formula_files_name_the_file_and_field(tmp_path, damage, error, message):
    path = write(tmp_path)
    damage(path)
    with pytest.raises(error, match=message) as info:
        read_formula(path)
    assert str(path) in str(info.value)


def test_a_minimal_formula_file_and_what_save_refuses(tmp_path):
    path = tmp_path / "bare.json"
    path.write_text(json.dumps({"format": "lrenv-formula", "version": 1, "expression": "1 - 0.9*progress", "features": "minimal"}))
    spec = read_formula(path)
    assert spec.name == "bare" and spec.relative_factor == 100.0 and spec.tasks == () and spec.formula.features == "minimal"
    policy = load_formula(path)
    with pytest.raises(ValueError, match="names no training task"):
        policy.task_config()
    with pytest.raises(ValueError, match="relative_factor must be a finite number > 1"):
        save_formula(tmp_path / "x.json", COSINE, relative_factor=0.5)
    with pytest.raises(ValueError, match="task_configs lacks the settings of task 'T'"):
        save_formula(tmp_path / "x.json", COSINE, tasks=["T"])
    with pytest.raises(ValueError, match="unknown name 'lr_ratio'"):
        save_formula(tmp_path / "x.json", "lr_ratio", features="minimal")
    assert not (tmp_path / "x.json").exists()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something"}))
    with pytest.raises(PolicyFileError, match="is not a policy: .*this file's format is 'something'"):
        lrenv.load_policy(other)


# -- FormulaScheduler -------------------------------------------------------------------------


def run_scheduler(scheduler: lrenv.PolicyScheduler, optimizer: torch.optim.Optimizer, losses=LOSSES) -> list[float]:
    """The LR of each epoch after the epoch-0 losses (one step per entry of ``losses``)."""
    lrs = []
    for train_loss, valid_loss in losses:
        scheduler.step(train_loss=train_loss, valid_loss=valid_loss, train_loss_std=0.1 * train_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def sgd(lr: float) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    return torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=lr, momentum=0.9)


def test_the_formula_scheduler_sets_base_times_ratio_of_the_coming_epoch():
    epochs = len(LOSSES) - 1
    optimizer = sgd(0.1)
    lrs = run_scheduler(lrenv.FormulaScheduler(optimizer, COSINE, epochs=epochs), optimizer)
    # after the epoch-i losses the LR of epoch i+1 is set, at progress i/T (i = 0 .. T-1), then one for i = T
    ratios = [0.5 * (1 + math.cos(math.pi * i / epochs)) for i in range(epochs + 1)]
    expected = [0.1 * max(r, 1 / 100) for r in ratios]  # the last ratio is 0: clipped to base/f
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.001)

    big = sgd(10.0)
    np.testing.assert_allclose(run_scheduler(lrenv.FormulaScheduler(big, COSINE, epochs=epochs), big), 100 * np.array(lrs), rtol=1e-12)

    # the ratio is clipped to [1/f, f]
    optimizer = sgd(0.1)
    lrs = run_scheduler(lrenv.FormulaScheduler(optimizer, "exp(12*(progress - 0.5))", epochs=epochs, relative_factor=20.0), optimizer)
    expected = [0.1 * min(max(math.exp(12 * (i / epochs - 0.5)), 1 / 20), 20) for i in range(epochs + 1)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert min(lrs) == pytest.approx(0.1 / 20) and max(lrs) == pytest.approx(0.1 * 20)


def test_the_formula_scheduler_is_the_policy_scheduler_of_the_loaded_formula(tmp_path):
    text = "exp(-valid_loss_change)*(1.2 - progress) + 0.5*train_loss_spread - 0.1*valid_loss"
    path = save_formula(tmp_path / "f.json", text, relative_factor=30.0)
    epochs = len(LOSSES) - 1
    runs = {}
    for how in ("expression", "formula", "file", "loaded", "policy_scheduler", "load_scheduler"):
        optimizer = sgd(0.05)
        if how == "expression":
            scheduler = lrenv.FormulaScheduler(optimizer, text, relative_factor=30.0, epochs=epochs)
        elif how == "formula":
            scheduler = lrenv.FormulaScheduler(optimizer, lrenv.Formula(text), relative_factor=30.0, epochs=epochs)
        elif how == "file":
            scheduler = lrenv.FormulaScheduler(optimizer, str(path), epochs=epochs)
        elif how == "loaded":
            scheduler = lrenv.FormulaScheduler(optimizer, load_formula(path), epochs=epochs)
        elif how == "policy_scheduler":
            scheduler = lrenv.PolicyScheduler(optimizer, load_formula(path), epochs=epochs)
        else:
            scheduler = lrenv.load_scheduler(optimizer, path, epochs=epochs)
        runs[how] = run_scheduler(scheduler, optimizer)
    reference = runs.pop("policy_scheduler")
    assert len(set(np.round(reference, 9))) > 4  # the losses move it: not a fixed schedule
    for how, lrs in runs.items():
        assert lrs == reference, how

    # state_dict: plain numbers; a fresh scheduler of the same formula continues identically
    optimizer = sgd(0.05)
    first = lrenv.FormulaScheduler(optimizer, path, epochs=epochs)
    run_scheduler(first, optimizer, LOSSES[:4])
    state = first.state_dict()
    resumed_opt = sgd(0.05)
    resumed = lrenv.FormulaScheduler(resumed_opt, path, epochs=epochs)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed_opt.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]
    assert run_scheduler(resumed, resumed_opt, LOSSES[4:]) == reference[4:]
    with pytest.raises(ValueError, match="this state belongs to a scheduler of policy"):
        lrenv.FormulaScheduler(sgd(0.05), COSINE, epochs=epochs).load_state_dict(state)


def test_formula_scheduler_arguments():
    with pytest.raises(ValueError, match="names no task it was fitted on.*pass epochs="):
        lrenv.FormulaScheduler(sgd(0.1), COSINE)
    with pytest.raises(ValueError, match="unknown name 'lr_ratio'"):
        lrenv.FormulaScheduler(sgd(0.1), "lr_ratio", features="minimal", epochs=5)
    with pytest.raises(ValueError, match="over feature set 'minimal', not features='relative'"):
        lrenv.FormulaScheduler(sgd(0.1), lrenv.Formula("progress", "minimal"), features="relative", epochs=5)
    with pytest.raises(TypeError, match="formula must be"):
        lrenv.FormulaScheduler(sgd(0.1), 3, epochs=5)
    scheduler = lrenv.FormulaScheduler(sgd(0.1), "1 - progress", features="minimal", epochs=5)
    assert scheduler.formula.features == "minimal" and scheduler.policy.env_config.features == "minimal"


# -- the evaluation harness -------------------------------------------------------------------


def test_formulas_and_schedule_files_in_the_harness(tmp_path):
    epochs, task = 5, lrenv.make_task("NoisyQuadratic-v0", epochs=5)
    base, (low, high) = task.config.default_lr, task.config.lr_range
    progress_only = save_formula(tmp_path / "cos.json", "0.2 + 0.5*(1 + cos(pi*progress))", name="cos-formula", relative_factor=10.0)
    reactive = save_formula(tmp_path / "loss.json", "exp(-0.3*valid_loss)*(1.5 - progress)", name="loss-formula", relative_factor=30.0)
    schedule = tmp_path / "schedule.json"
    fixed = [0.5, 0.4, 0.3, 0.02, 0.01]
    schedule.write_text(json.dumps({"format": "lrenv-schedule", "version": 1, "name": "fit", "task": task.name, "lrs": fixed, "note": "x"}))
    contenders = [load_contender(str(path)) for path in (progress_only, reactive, schedule)]
    assert [c.kind for c in contenders] == ["learned", "learned", "reference"] and contenders[2].lrs == {task.name: fixed}
    assert contenders[0].env.action_mode == "multiplier" and contenders[0].env.relative_factor == 10.0

    results = compare(["NoisyQuadratic-v0"], baselines=[], contenders=contenders, optimal=False, eval_seeds=2, tune_seeds=0,
                      task_config={"epochs": epochs}, workers=0)  # fmt: skip
    assert results.methods == ["cos-formula", "loss-formula", "fit"]
    ratios = np.array([0.2 + 0.5 * (1 + math.cos(math.pi * i / epochs)) for i in range(epochs)])
    for episode in results.evaluation(task.name, "cos-formula"):  # base·ratio(i/T), clipped to [base/f, base·f] and the task's range
        np.testing.assert_allclose(episode.lrs, np.clip(base * ratios, max(low, base / 10), min(high, base * 10)), rtol=1e-6)
    for episode in results.evaluation(task.name, "fit"):
        np.testing.assert_allclose(episode.lrs, fixed, rtol=1e-6)
    for episode in results.evaluation(task.name, "loss-formula"):  # the scheduler, fed the episode's losses, sets the same LRs
        optimizer = sgd(base)
        scheduler = lrenv.load_scheduler(optimizer, reactive, epochs=epochs)
        lrs = []
        for train_loss, valid_loss in zip(episode.train_loss[:epochs], episode.valid_loss[:epochs]):
            scheduler.step(train_loss=train_loss, valid_loss=valid_loss)
            lrs.append(optimizer.param_groups[0]["lr"])
        assert len(set(np.round(lrs, 9))) == epochs
        np.testing.assert_allclose(episode.lrs, lrs, rtol=1e-6)

    # a worker process loads the contender again from its path (PolicyRef kind "run")
    eval_runner._RUN_POLICIES.pop(str(progress_only), None)
    loaded = eval_runner._build_policy(PolicyRef("run", run_dir=str(progress_only)), task.config, "relative")
    assert isinstance(loaded.model, FormulaModel) and loaded.name == "cos-formula"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "lrenv-schedule", "version": 1, "task": "T", "lrs": [0.1, -0.1]}, r"lrs\[1\] is -0.1"),
        ({"format": "lrenv-schedule", "version": 1, "task": "T", "lrs": [0.1, None]}, r"lrs\[1\] is None"),
        ({"format": "lrenv-schedule", "version": 1, "task": "T", "lrs": []}, "non-empty list"),
        ({"format": "lrenv-schedule", "version": 2, "task": "T", "lrs": [0.1]}, "version 2"),
        ({"format": "lrenv-schedule", "version": 1, "lrs": [0.1]}, "lacks 'task'"),
        ({"format": "lrenv-schedule", "version": 1, "task": "", "lrs": [0.1]}, "task must be a task name"),
        ({"format": "other", "version": 1, "task": "T", "lrs": [0.1]}, "not an lrenv schedule file"),
    ],
)
def test_bad_schedule_files(tmp_path, data, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match=message):
        load_schedule_file(path)


def test_the_cli_compares_a_formula_and_a_schedule_file(tmp_path):
    from lrenv.agents import evaluate

    formula = save_formula(tmp_path / "formula.json", COSINE, name="cos-formula", relative_factor=10.0)
    schedule = tmp_path / "law.json"
    schedule.write_text(json.dumps({"format": "lrenv-schedule", "version": 1, "name": "law", "task": "NoisyQuadratic-v0", "lrs": [0.4, 0.3, 0.2, 0.1]}))
    out = tmp_path / "out"
    results = evaluate.main(["--tasks", "NoisyQuadratic-v0", "--runs", str(formula), str(schedule), "--baselines", "constant", "--quick",
                             "--no-optimal", "--workers", "0", "--no-cache", "--no-progress", "--out", str(out)])  # fmt: skip
    with (out / "summary.csv").open() as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"constant", "cos-formula", "law"}
    assert rows["cos-formula"]["kind"] == "learned" and rows["law"]["kind"] == "reference"
    law = results.evaluation("NoisyQuadratic-v0", "law")
    assert len(law) == 3 and all(np.allclose(e.lrs, [0.4, 0.3, 0.2, 0.1], rtol=1e-6) for e in law)
    ratios = [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    for e in results.evaluation("NoisyQuadratic-v0", "cos-formula"):
        np.testing.assert_allclose(e.lrs, [0.1 * max(r, 0.1) for r in ratios], rtol=1e-6)  # default_lr 0.1 is the base


def test_formula_policy_needs_the_settings_of_its_tasks():
    with pytest.raises(ValueError, match="task_configs lacks the settings of task.s. T"):
        formula_policy(COSINE, tasks=["T"])


def test_the_shipped_closed_form():
    """lrenv ships the default Ψ distilled into a formula (agents.distill default --ship)."""
    import torch

    import lrenv

    policy = lrenv.load_policy("formula")
    formula = policy.model.formula
    assert formula.operations <= 10 and "progress" in formula.variables
    assert policy.tasks == ["MNIST1D-MLP-v0", "Digits-MLP-v0"] and policy.model.relative_factor == 30.0
    lrs = {}
    for base in (0.01, 1.0):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
        scheduler = lrenv.load_scheduler(optimizer, "formula", initial_train_loss=2.3, initial_valid_loss=2.3)
        for epoch in range(20):
            loss = 2.3 * 0.9 ** (epoch + 1)
            scheduler.step(train_loss=loss, valid_loss=loss, train_loss_std=0.1 * loss)
        lrs[base] = np.array(scheduler.lrs)
    np.testing.assert_allclose(lrs[1.0], 100 * lrs[0.01], rtol=1e-9)  # scale from the user
    assert lrs[1.0][0] > 1.0 and lrs[1.0][-1] < 0.1  # shape from Ψ: above the base early, far below it late
