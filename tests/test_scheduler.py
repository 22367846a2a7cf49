"""PolicyScheduler: a trained run's policy drives a user's optimizer exactly as it drove the env."""

import io
import json

import numpy as np
import pytest
import torch
from conftest import TinyClassifier

import lrenv
from lrenv.agents import train
from lrenv.engine import run_seeds

TASK = "SchedTiny-v0"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny PPO run on a 5-epoch task (trained once for the whole module)."""
    lrenv.register_task(TASK, TinyClassifier)
    try:
        yield train.main(
            [
                "--algo", "ppo", "--task", TASK, "--timesteps", "80", "--n-envs", "4", "--eval-episodes", "0",
                "--set", "hyperparams.n_steps=5", "hyperparams.batch_size=10", "hyperparams.n_epochs=2",
                "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--no-progress-bar",
            ]
        )
    finally:
        lrenv.unregister_task(TASK)


@pytest.fixture
def task():
    task = TinyClassifier()
    task.name = TASK
    return task


def evaluate(task, model, split) -> float:
    model.eval()
    with torch.no_grad():
        return float(task.loss(model(split.x), split.y))


def test_load_policy_interface(run_dir):
    policy = lrenv.load_policy(run_dir)
    assert policy.name == f"ppo-{TASK}-s0"
    assert policy.config["algo"] == "ppo" and policy.tasks == [TASK]
    assert policy.env_kwargs["features"] == "standard" and policy.env_kwargs["action_mode"] == "absolute"
    assert set(policy.env_kwargs) <= set(lrenv.EnvConfig.field_names())
    obs = np.zeros((3, 8), np.float32)
    actions = policy.predict(obs, deterministic=True)
    assert actions.shape == (3, 1) and actions.dtype == np.float32 and np.all(np.abs(actions) <= 1)
    # the saved statistics are VecNormalize's: normalisation is not the identity
    assert policy.normalization is not None and not np.allclose(policy.normalize(obs), obs)
    # a checkpoint folder and a policy.json load too; SB3's model.zip only when trusted
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert lrenv.load_policy(checkpoint).predict(obs).shape == (3, 1)
    assert lrenv.load_policy(run_dir / "policy.json").name == policy.name
    with pytest.raises(lrenv.policy.UntrustedPolicyError, match="trust=True"):
        lrenv.load_policy(run_dir / "model.zip")
    trusted = lrenv.load_policy(run_dir / "model.zip", trust=True)
    np.testing.assert_array_equal(trusted.predict(obs), actions)
    assert trusted.timesteps == policy.timesteps >= 80
    with pytest.raises(FileNotFoundError, match="no policy"):
        lrenv.load_policy(run_dir / "nothing")


def test_scheduler_sets_the_lrs_the_env_applied(run_dir, task):
    policy = lrenv.load_policy(run_dir)
    env = lrenv.LREnv(TASK, device="cpu", **policy.env_kwargs)  # the task is registered by the run_dir fixture
    obs, info = env.reset(seed=3)
    run_seed = info["run_seed"]
    env_lrs, env_obs = [], [obs]
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy.predict(obs[None])[0])
        env_lrs.append(info["lr"])
        env_obs.append(obs)
        done = terminated or truncated
    assert len(env_lrs) == 5 and len(set(np.round(env_lrs, 8))) > 1  # the policy does not play a constant

    # a plain PyTorch loop: same initialisation and data order as the env's run
    cfg, data = task.config, task.data()
    init_seed, order_seed = run_seeds(run_seed)
    with torch.random.fork_rng(devices=[]):
        model = task.model(torch.Generator().manual_seed(init_seed))
    order = torch.Generator().manual_seed(order_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.default_lr, momentum=cfg.momentum)
    scheduler = lrenv.load_scheduler(
        optimizer, run_dir, initial_train_loss=evaluate(task, model, data.train), initial_valid_loss=evaluate(task, model, data.valid)
    )
    np.testing.assert_allclose(scheduler.observation, env_obs[0], rtol=1e-6)
    applied = []
    for epoch in range(cfg.epochs):
        applied.append(optimizer.param_groups[0]["lr"])
        model.train()
        losses = []
        for idx in torch.randperm(len(data.train), generator=order).split(cfg.batch_size):
            loss = task.loss(model(data.train.x[idx]), data.train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        batch_losses = torch.stack(losses)
        scheduler.step(train_loss=batch_losses.mean(), valid_loss=evaluate(task, model, data.valid), train_loss_std=batch_losses.std())
        np.testing.assert_allclose(scheduler.observation, env_obs[epoch + 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(applied, env_lrs, rtol=1e-6)
    assert scheduler.epoch == 5 and scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]


def test_first_step_gives_epoch_zero_and_state_dict_is_plain_numbers(run_dir):
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=0.1)
    scheduler = lrenv.load_scheduler(opt, run_dir)
    assert opt.param_groups[0]["lr"] == 0.1 and not scheduler.started  # LRScheduler's own init step changed nothing
    scheduler.step(train_loss=1.1, valid_loss=1.2)  # epoch 0: the untrained model's losses
    assert scheduler.epoch == 0 and opt.param_groups[0]["lr"] == scheduler.lrs[0] != 0.1
    scheduler.step(train_loss=0.9, valid_loss=1.0, train_loss_std=0.1)
    scheduler.step(torch.tensor(0.95))  # Lightning style: the monitored validation loss only
    assert scheduler.epoch == 2

    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # no pickled agent inside
    json.dumps(state)
    twin_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    twin = lrenv.load_scheduler(twin_opt, run_dir)
    twin.load_state_dict(state)
    for s in (scheduler, twin):
        s.step(train_loss=0.8, valid_loss=0.9, train_loss_std=0.05)
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and twin.lrs == scheduler.lrs

    with pytest.raises(ValueError, match="reduce_on_plateau"):
        scheduler.step()
    with pytest.raises(ValueError, match="initial_valid_loss"):
        lrenv.load_scheduler(opt, run_dir, initial_train_loss=1.0)


def test_param_groups_keep_their_ratio_and_overrides_apply(run_dir):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    scheduler = lrenv.load_scheduler(opt, run_dir, epochs=50, lr_range=(1e-4, 1.0), initial_train_loss=1.0, initial_valid_loss=1.0)
    assert scheduler.epochs == 50 and scheduler.lr_range == (1e-4, 1.0)
    lr0, lr1 = (g["lr"] for g in opt.param_groups)
    assert 1e-4 <= lr0 <= 1.0 and lr1 == pytest.approx(lr0 / 10)


def test_lightning_trainer_recipe(run_dir, tmp_path, task):
    lightning = pytest.importorskip("lightning")
    data = task.data()

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            with torch.random.fork_rng(devices=[]):
                self.net = task.model(torch.Generator().manual_seed(0))

        def training_step(self, batch, _):
            loss = task.loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", task.loss(self.net(batch[0]), batch[1]), on_epoch=True)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=task.config.default_lr, momentum=0.9)
            with torch.no_grad():  # epoch-0 losses of the untrained model
                initial = {name: float(task.loss(self.net(s.x), s.y)) for name, s in (("train", data.train), ("valid", data.valid))}
            scheduler = lrenv.load_scheduler(optimizer, run_dir, initial_train_loss=initial["train"], initial_valid_loss=initial["valid"])
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch", "reduce_on_plateau": True},
            }

        def lr_scheduler_step(self, scheduler, metric):  # also hand over the train loss
            scheduler.step(train_loss=self.trainer.callback_metrics["train_loss"], valid_loss=metric)

    loader = torch.utils.data.DataLoader
    train_loader = loader(torch.utils.data.TensorDataset(data.train.x, data.train.y), batch_size=32, shuffle=True)
    valid_loader = loader(torch.utils.data.TensorDataset(data.valid.x, data.valid.y), batch_size=100)
    lrs = []

    class RecordLR(lightning.Callback):
        def on_train_epoch_start(self, trainer, module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = Module()
    trainer = lightning.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[RecordLR()],
    )
    trainer.fit(module, train_loader, valid_loader)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.epoch == 3  # one step per epoch, with the monitored loss
    assert lrs == scheduler.lrs[:3]  # every epoch trained at the policy's LR
    assert trainer.optimizers[0].param_groups[0]["lr"] == scheduler.lrs[3]


def test_the_default_resumes_from_a_checkpoint_as_if_never_stopped():
    """The default Ψ reads the best loss so far: a resumed run must remember it, or it never cuts again."""
    losses = [(1.0, 1.1), (0.8, 0.9), (0.7, 0.85), (0.6, 0.95), (0.55, 1.0), (0.5, 0.97), (0.45, 1.05)]

    def scheduler():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        return opt, lrenv.load_scheduler(opt, "default", epochs=len(losses))

    opt, whole = scheduler()
    for train_loss, valid_loss in losses:
        whole.step(train_loss=train_loss, valid_loss=valid_loss)
    _, first = scheduler()
    for train_loss, valid_loss in losses[:4]:
        first.step(train_loss=train_loss, valid_loss=valid_loss)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    twin_opt, twin = scheduler()
    twin.load_state_dict(state)
    for train_loss, valid_loss in losses[4:]:
        twin.step(train_loss=train_loss, valid_loss=valid_loss)
    assert twin.lrs == whole.lrs and twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert min(whole.lrs[4:]) < max(whole.lrs[:4])  # the losses above the best did cut

    older = {**state, "observer": {k: v for k, v in state["observer"].items() if k not in ("best_valid", "best_epoch", "valid_change")}}
    _, old = scheduler()
    with pytest.warns(UserWarning, match="best_valid, best_epoch, valid_change"):
        old.load_state_dict(older)
    old.step(train_loss=0.55, valid_loss=1.0)  # still runs, from the latest loss as the best
    assert len(old.lrs) == 5
    no_peak = {**state, "observer": {k: v for k, v in state["observer"].items() if k != "peak_lr"}}
    _, old = scheduler()
    with pytest.warns(UserWarning, match=r"no peak_lr .*: the highest LR so far restarts at the latest one"):
        old.load_state_dict(no_peak)
    assert old.observer.peak_lr.tolist() == old.observer.lr.tolist()
