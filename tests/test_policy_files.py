"""lrenv's policy files: a shared run runs no code when loaded, and every broken file is a clear error."""

import base64
import contextlib
import hashlib
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TinyClassifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrenv
from lrenv.agents import train
from lrenv.evaluation import load_run
from lrenv.policy import PolicyFileError, UntrustedPolicyError, algorithm_class, load_policy, read_policy_files, save_policy_files
from lrenv.run_dir import RunDir

TASK = "PolicyFilesTiny-v0"
OBS = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PPO run with checkpoints (trained once for the module; tests damage copies of it)."""
    lrenv.register_task(TASK, TinyClassifier)
    try:
        yield train.main(
            ["--algo", "ppo", "--task", TASK, "--timesteps", "40", "--n-envs", "2", "--checkpoint-freq", "20", "--eval-episodes", "0",
             "--set", "hyperparams.n_steps=5", "hyperparams.batch_size=10", "hyperparams.n_epochs=2",
             "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--no-progress-bar"]
        )
    finally:
        lrenv.unregister_task(TASK)


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / trained.name))


# -- the format rebuilds each algorithm's policy exactly ----------------------------------------


class _Stub(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3", "tqc", "trpo"])
def test_rebuilt_policy_acts_as_the_sb3_model(algo, tmp_path):
    if algo in ("tqc", "trpo"):
        pytest.importorskip("sb3_contrib")
    kwargs = {"net_arch": [16, 8], "activation_fn": torch.nn.ELU} if algo in ("sac", "td3", "tqc") else {"net_arch": {"pi": [16], "vf": [8]}}
    model = algorithm_class(algo)("MlpPolicy", _Stub(), policy_kwargs=kwargs, seed=0, device="cpu")
    save_policy_files(model, tmp_path)
    spec = json.loads((tmp_path / "policy.json").read_text())
    assert spec["observation_space"]["low"][0] == "-inf" and spec["kwargs"]["features_extractor_class"] == "FlattenExtractor"
    rng = torch.get_rng_state()
    policy, timesteps = read_policy_files(tmp_path, algo)
    assert timesteps == 0 and torch.equal(rng, torch.get_rng_state())  # loading leaves the user's RNG stream alone
    assert type(policy) is type(model.policy) and not policy.training
    np.testing.assert_array_equal(policy.predict(OBS, deterministic=True)[0], model.predict(OBS, deterministic=True)[0])


def test_a_policy_outside_the_allow_lists_is_not_saved(tmp_path):
    model = algorithm_class("ppo")("MlpPolicy", _Stub(), policy_kwargs={"activation_fn": torch.nn.Hardswish}, device="cpu")
    with pytest.raises(PolicyFileError, match="activation_fn=.*Hardswish.*allowed: Tanh, ReLU"):
        save_policy_files(model, tmp_path)


# -- a planted pickle runs nowhere without trust=True ---------------------------------------------


class _Payload:
    """Unpickling it writes ``marker``: what any code in a shared model.zip could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _plant(zip_file: Path, marker: Path) -> None:
    """Replace the cloudpickled observation space in SB3's ``data`` entry with the payload."""
    with zipfile.ZipFile(zip_file) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    data = json.loads(entries["data"])
    data["observation_space"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_file, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)


def test_loading_a_run_with_a_planted_pickle_runs_nothing(run, tmp_path):
    expected = load_policy(run).predict(OBS)
    marker = tmp_path / "payload-ran"
    for folder in (run, *RunDir(run).checkpoints()):
        _plant(folder / "model.zip", marker)

    policy = load_policy(run)
    np.testing.assert_array_equal(policy.predict(OBS), expected)
    load_policy(RunDir(run).checkpoints()[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lrenv.load_scheduler(optimizer, run, initial_train_loss=1.0, initial_valid_loss=1.0)
    assert load_run(run).policy.predict(OBS).shape == (16, 1)  # what python -m agents.evaluate --runs RUN loads
    assert not marker.exists()

    # SB3's zip needs trust=True, and the error says why
    with pytest.raises(UntrustedPolicyError, match=r"model.zip is a Stable-Baselines3 model.zip: it holds Python pickles, which run code") as error:
        load_policy(run / "model.zip")
    assert f"load the folder {run} instead" in str(error.value) and "pass trust=True only for files you made yourself" in str(error.value)
    for name in ("policy.json", "policy.safetensors"):  # a folder with only the zip (an SB3 run, or one from before these files)
        (run / name).unlink()
    with pytest.raises(UntrustedPolicyError, match="so lrenv reads it only when told to: pass trust=True only"):
        load_policy(run)
    with pytest.raises(UntrustedPolicyError):
        lrenv.load_scheduler(optimizer, run)
    assert not marker.exists()

    # ... because trusting it runs the payload
    with contextlib.suppress(PolicyFileError):  # SB3 then fails on the payload's result
        load_policy(run, trust=True)
    assert marker.read_text() == "ran"


def test_trusted_sb3_zip_loads_the_same_policy(trained):
    safe, trusted = load_policy(trained), load_policy(trained / "model.zip", trust=True)
    np.testing.assert_array_equal(trusted.predict(OBS), safe.predict(OBS))
    assert trusted.timesteps == safe.timesteps == trusted.model.num_timesteps


# -- every broken file is an error that names it ----------------------------------------------------


def _edit_json(name, change):
    def edit(run):
        path = run / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def _write(name, content: bytes):
    return lambda run: (run / name).write_bytes(content)


def _truncate(name):
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[: (run / name).stat().st_size // 2])


def _garbage_weights(run):
    # a readable-looking spec over garbage weights: the checksum matches, safetensors itself refuses
    (run / "policy.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + bytes(100_000))
    _edit_json("policy.json", lambda d: d.update(weights_sha256=hashlib.sha256((run / "policy.safetensors").read_bytes()).hexdigest()))(run)


BROKEN = {
    "empty config": (_write("config.json", b""), PolicyFileError, "config.json is empty"),
    "config {}": (_write("config.json", b"{}"), PolicyFileError, "config.json lacks 'algo', 'tasks'"),
    "config invalid JSON": (_write("config.json", b'{"algo": "pp'), PolicyFileError, "config.json is not valid JSON"),
    "config not an object": (_write("config.json", b"[1, 2]"), PolicyFileError, "config.json must hold a JSON object"),
    "config binary": (_write("config.json", b"\xff\xfe\x00garbage"), PolicyFileError, "config.json is not a JSON text file"),
    "config unknown algo": (_edit_json("config.json", lambda d: d.update(algo="dqn")), PolicyFileError, "config.json: algo 'dqn' is not one of"),
    "config bad tasks": (_edit_json("config.json", lambda d: d.update(tasks="x")), PolicyFileError, "config.json: tasks must be a non-empty list"),
    "config from a newer lrenv": (
        _edit_json("config.json", lambda d: (d["env"].update(new_setting=1), d["versions"].update(lrenv="9.0.0"))),
        PolicyFileError, r"config.json: .*unknown keyword argument\(s\) new_setting.*written by lrenv 9.0.0; this is lrenv",
    ),
    "config missing": (lambda run: (run / "config.json").unlink(), FileNotFoundError, "no config.json in"),
    "policy.json from a newer lrenv": (
        _edit_json("policy.json", lambda d: d.update(format=2, lrenv="9.0.0")), PolicyFileError, "policy.json has format 2, written by lrenv 9.0.0; this lrenv",
    ),
    "policy.json bad format": (_edit_json("policy.json", lambda d: d.update(format="1")), PolicyFileError, "policy.json has format '1', which no lrenv writes"),
    "policy.json no format": (_edit_json("policy.json", lambda d: d.pop("format")), PolicyFileError, "policy.json lacks 'format'"),
    "policy.json truncated": (_truncate("policy.json"), PolicyFileError, "policy.json is not valid JSON"),
    "policy.json lacks kwargs": (_edit_json("policy.json", lambda d: d.pop("kwargs")), PolicyFileError, "policy.json lacks 'kwargs'"),
    "policy.json other algo": (_edit_json("policy.json", lambda d: d.update(algo="sac")), PolicyFileError, "policy.json is a 'sac' policy, but its run"),
    "policy.json other class": (
        _edit_json("policy.json", lambda d: d.update(policy_class="SACPolicy")), PolicyFileError, "policy_class 'SACPolicy' is not allowed for ppo",
    ),
    "policy.json activation by path": (
        _edit_json("policy.json", lambda d: d["kwargs"].update(activation_fn="os.system")), PolicyFileError, "activation_fn 'os.system' is not allowed",
    ),
    "policy.json features extractor": (
        _edit_json("policy.json", lambda d: d["kwargs"].update(features_extractor_class="NatureCNN")), PolicyFileError,
        "features_extractor_class 'NatureCNN' is not allowed; choose one of FlattenExtractor",
    ),
    "policy.json bad kwarg": (_edit_json("policy.json", lambda d: d["kwargs"].update(nope=1)), PolicyFileError, "policy.json: its settings do not build"),
    "policy.json other net_arch": (
        _edit_json("policy.json", lambda d: d["kwargs"].update(net_arch=[3])), PolicyFileError, "policy.safetensors does not fit the network policy.json",
    ),
    "policy.json huge net_arch": (
        _edit_json("policy.json", lambda d: d["kwargs"].update(net_arch=[10**6, 10**6])), PolicyFileError, "policy.json describes a network of at least",
    ),
    "policy.json bad space": (
        _edit_json("policy.json", lambda d: d["observation_space"].update(shape=[9])), PolicyFileError, "observation_space: low must list 9 numbers",
    ),
    "policy.json other space": (
        _edit_json("policy.json", lambda d: d["observation_space"].update(shape=[2], low=[0, 0], high=[1, 1])), PolicyFileError,
        "does not fit the network",
    ),
    "policy.json missing": (lambda run: (run / "policy.json").unlink(), FileNotFoundError, "policy.json is missing"),
    "weights missing": (lambda run: (run / "policy.safetensors").unlink(), FileNotFoundError, "policy.safetensors is missing"),
    "weights truncated": (_truncate("policy.safetensors"), PolicyFileError, "policy.safetensors is not the file policy.json was saved with"),
    "weights garbage": (_garbage_weights, PolicyFileError, "policy.safetensors is not a readable safetensors file"),
    "normalization garbage": (_write("normalization.json", b"\x00\x01"), PolicyFileError, "normalization.json is not valid JSON"),
    "normalization lacks var": (_edit_json("normalization.json", lambda d: d.pop("var")), PolicyFileError, "normalization.json lacks 'var'"),
    "normalization bad numbers": (
        _edit_json("normalization.json", lambda d: d.update(mean=["a"] * 8)), PolicyFileError, "normalization.json: the statistics are not numbers",
    ),
    "normalization of other features": (
        _edit_json("normalization.json", lambda d: d.update(mean=[0.0] * 3, var=[1.0] * 3)), PolicyFileError, "holds statistics of 3 features",
    ),
    "normalization missing": (lambda run: (run / "normalization.json").unlink(), FileNotFoundError, "normalization.json is missing"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_run_folder_is_a_clear_error(case, run):
    damage, error, message = BROKEN[case]
    damage(run)
    with pytest.raises(error, match=message):
        load_policy(run)
    with pytest.raises(error, match=message):  # the scheduler loads through load_policy
        lrenv.load_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), run)


def test_a_garbage_model_zip_is_a_clear_error_even_when_trusted(run):
    (run / "model.zip").write_bytes(b"not a zip")
    assert load_policy(run).predict(OBS).shape == (16, 1)  # the safe files do not need it
    with pytest.raises(PolicyFileError, match="model.zip could not be loaded as an SB3 ppo model"):
        load_policy(run / "model.zip", trust=True)
    with pytest.raises(PolicyFileError, match="is not a policy: pass a run folder"):
        load_policy(run / "config.json")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_write("config.json", b""), "config.json is empty"),
        (_write("config.json", b"{}"), "config.json lacks 'algo'"),
        (_edit_json("config.json", lambda d: d.pop("hyperparams")), "config.json lacks 'hyperparams'"),
    ],
)
def test_resume_of_a_broken_config_is_a_clear_error(damage, message, run, capsys):
    damage(run)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(run), "--no-progress-bar"])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("model.zip", b"not a zip", r"model.zip could not be loaded as an SB3 PPO model"),
        ("vecnormalize.pkl", b"garbage", r"vecnormalize.pkl could not be loaded as SB3 VecNormalize statistics"),
        ("state.json", b'{"timesteps": "many"}', r"state.json: timesteps must be an integer"),
        ("state.json", b"", r"state.json is empty"),
    ],
)
def test_resume_of_a_broken_checkpoint_is_a_clear_error(name, content, message, run, capsys):
    (RunDir(run).latest_checkpoint() / name).write_bytes(content)
    with pytest.raises(SystemExit) as exc:  # the task is registered by the trained fixture
        train.main(["--resume", str(run), "--no-progress-bar"])
    assert exc.value.code == 2 and re.search(message, capsys.readouterr().err)


# -- whatever policy.json says, loading ends in a PolicyFileError or a policy ------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(["inf", "ReLU", "Box", "float32", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["pi", "vf", "qf", "low", "x"]), inner, max_size=3),
    max_leaves=8,
)
_PATHS = [("format",), ("algo",), ("policy_class",), ("kwargs",), ("observation_space",), ("action_space",), ("weights_sha256",), ("timesteps",)]
_PATHS += [("kwargs", k) for k in ("net_arch", "activation_fn", "optimizer_class", "optimizer_kwargs", "log_std_init", "ortho_init", "use_sde",
                                   "features_extractor_kwargs", "squash_output", "normalize_images")]
_PATHS += [(space, k) for space in ("observation_space", "action_space") for k in ("type", "shape", "dtype", "low", "high")]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_PATHS), value=_JSON)
def test_any_policy_json_value_loads_or_is_a_policy_file_error(path, value, trained, tmp_path):
    folder = tmp_path / "run"
    if not folder.exists():
        shutil.copytree(trained, folder)
    spec = json.loads((trained / "policy.json").read_text())
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (folder / "policy.json").write_text(json.dumps(spec))
    try:
        policy = load_policy(folder)
    except PolicyFileError as exc:
        assert "policy.json" in str(exc) or "policy.safetensors" in str(exc)
    else:
        assert policy.predict(OBS).shape == (16, 1)
