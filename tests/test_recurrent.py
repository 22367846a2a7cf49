"""agents.recurrent: RecurrentPPO trains on the env of agents.train and is evaluated beside the action-0 policy."""

import json
import math

from lrenv.agents import recurrent


def test_recurrent_ppo_writes_finite_results(tmp_path):
    recurrent.main(
        ["--task", "Digits-MLP-v0", "--timesteps", "16", "--n-envs", "2", "--eval-episodes", "2", "--lstm-hidden-size", "8", "--out", str(tmp_path),
         "--set", "env.task_config.epochs=2", "hyperparams.n_steps=4", "hyperparams.batch_size=4", "hyperparams.n_epochs=1"]
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["timesteps"] == 16 and len(results["train_return_bins"]) == 5
    res = results["tasks"]["Digits-MLP-v0"]
    assert res["seeds"] == [1_000_000, 1_000_001]
    numbers = [*results["train_return_bins"], res["policy"]["final_valid_loss_mean"], res["action0"]["final_valid_loss_mean"]]
    numbers += [res["default_constant"]["final_valid_loss_mean"], res["policy_minus_action0"]["mean"]]
    assert all(isinstance(x, float) and math.isfinite(x) for x in numbers)
    assert all(len(lrs) == 2 for lrs in res["policy_lr"])
    for name in ("config.json", "episodes.jsonl", "model.zip", "vecnormalize.pkl"):
        assert (tmp_path / name).is_file(), name
