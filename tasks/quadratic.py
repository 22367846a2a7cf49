"""``NoisyQuadratic-v0``: the noisy quadratic model (NQM) as a data + model + loss task.

The NQM (Zhang et al. 2019, "Which algorithmic choices matter at which batch sizes?";
Wu et al. 2018, "Understanding short-horizon bias in stochastic meta-optimization") is a
quadratic loss whose minibatch gradients carry noise shaped like the curvature. It is the
smallest problem on which a learning-rate schedule matters for a reason that carries over
to neural networks: large steps make progress along flat directions, small steps are
needed to average out gradient noise along sharp ones. Its expected dynamics have a closed
form, so the best schedule can be computed (:meth:`NoisyQuadratic.optimal_schedule`) and a
learned one compared with it.

Here the engine trains it like any other task:

- Parameters ``θ ∈ R^d``, ``d = 100``; curvatures ``h_i`` log-spaced from ``1e-2`` to ``1``.
- Initialisation: ``θ0_i = ±1``, the signs drawn from the generator. Every seed starts at
  the same validation loss ``0.5 Σ h_i ≈ 10.9``, and the initial second moment
  ``E[θ0_i²] = 1`` of the expected dynamics holds exactly, not just on average.
- Data: ``c_j ∈ R^d`` with ``c_ji ~ N(0, 1/h_i)`` (fixed seed 0), 4,096 train samples,
  moment-matched: each coordinate is shifted and scaled so that its sample mean is exactly
  0 and its sample variance exactly ``1/h_i``. The empirical risk minimum is then exactly
  ``θ = 0``, as in the population, and the expected dynamics are exact.
- Model: ``forward(x) = θ - x``. Targets: ``sqrt(h)``, the same row for every sample, so
  the curvature reaches the loss on whatever device and in whatever dtype the data live,
  and the model has no buffers (the engine can stack it). Loss
  ``= 0.5 * mean_j Σ_i (y_ji * out_ji)² = 0.5 * mean_j Σ_i h_i (θ_i - c_ji)²``. The
  minibatch gradient is ``Hθ`` plus noise of covariance ``H / B`` (with replacement; less
  when an epoch shuffles without replacement, see :meth:`NoisyQuadratic.expected_losses`).
- Validation split: a single sample ``c = 0``. Its loss is ``0.5 Σ_i h_i θ_i²``, the NQM's
  risk: the expected loss of ``θ`` on fresh data minus the irreducible part
  ``0.5 Σ_i h_i Var(c_i) = d / 2 = 50``. The irreducible part is left out of the validation
  loss because it would dwarf everything a schedule can change (the noise floor of SGD with
  batch B is about ``1/B`` of it). The train loss keeps it: train losses are about 50 +
  risk. No test split: the validation loss already is the exact population risk.

Default budget: 20 epochs of batch 128 (32 steps per epoch), plain SGD. SGD is stable for
``lr < 2 / h_max = 2``; the LR range ``1e-3 .. 4`` ends well past it (lr 4 diverges in
the first epoch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lrenv.task import Split, Task, TaskConfig, TaskData
from lrenv.tasks._common import register

DIM = 100
H_MIN, H_MAX = 1e-2, 1.0
N_TRAIN = 4096
INIT_SCALE = 1.0
DATA_SEED = 0

Sampling = Literal["reshuffle", "replacement"]


def curvatures() -> torch.Tensor:
    """The curvatures ``h`` (float64, length :data:`DIM`), log-spaced from ``H_MIN`` to ``H_MAX``."""
    return torch.logspace(math.log10(H_MIN), math.log10(H_MAX), DIM, dtype=torch.float64)


@functools.lru_cache(maxsize=1)
def load_data() -> TaskData:
    """The NQM's fixed data (generated once per process from seed 0, ~2 MB)."""
    h = curvatures()
    z = torch.randn(N_TRAIN, DIM, generator=torch.Generator().manual_seed(DATA_SEED), dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, correction=0)  # moment-matched: mean 0, variance 1 exactly
    c = (z / h.sqrt()).float()
    sqrt_h = h.sqrt().float()
    return TaskData(
        train=Split(c, sqrt_h.expand(N_TRAIN, DIM).contiguous()),
        valid=Split(torch.zeros(1, DIM), sqrt_h.unsqueeze(0)),
    )


class _Quadratic(nn.Module):
    """One parameter vector ``theta``; ``forward(x) = theta - x`` (broadcast over the batch)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta - x


class NoisyQuadratic(Task):
    """``NoisyQuadratic-v0``: the noisy quadratic model (see the module docstring).

    Besides the Task contract it has the expected dynamics of plain SGD on it:
    :meth:`expected_losses` (the expected validation loss after each epoch of a schedule),
    :meth:`optimal_schedule` (the per-epoch LRs that minimise the expected final loss),
    :attr:`initial_loss` and :attr:`steps_per_epoch`.

    Defaults: 20 epochs, batch 128, plain SGD (``momentum`` 0.9 is used only if the
    optimizer is overridden), LRs ``1e-3 .. 4``, ``default_lr`` 0.1: an untuned mid-range
    constant (expected final loss 0.025; the best constant, 0.22, reaches 0.0069).
    ``target_loss`` 1e-3: no constant LR reaches it, a tuned cosine does at epoch 17,
    the optimal schedule at epoch 13 (it ends at 2.4e-5).
    """

    default_config = TaskConfig(
        epochs=20,
        batch_size=128,
        optimizer="sgd",
        lr_range=(1e-3, 4.0),
        default_lr=0.1,
        momentum=0.9,
        target_loss=1e-3,
    )

    def data(self) -> TaskData:
        """The fixed data; ``seed`` is accepted for the contract and ignored."""
        return load_data()

    def model(self, generator: torch.Generator) -> nn.Module:
        signs = torch.randint(0, 2, (DIM,), generator=generator, device=generator.device)
        return _Quadratic(((2.0 * signs - 1.0) * INIT_SCALE).float())

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``0.5 * mean_j Σ_i h_i (θ_i - c_ji)²``: ``output = θ - c``, ``target = sqrt(h)``."""
        return 0.5 * (target * output).square().sum(-1).mean()

    # -- the NQM's expected dynamics -----------------------------------------------------

    @property
    def initial_loss(self) -> float:
        """Validation loss at initialisation, the same for every seed: ``0.5 Σ_i h_i``."""
        return 0.5 * float(curvatures().sum()) * INIT_SCALE**2

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, ``ceil(4096 / batch_size)`` (the last batch may be smaller)."""
        return -(-N_TRAIN // self.config.batch_size)

    def expected_losses(self, lrs: Sequence[float], sampling: Sampling = "reshuffle") -> list[float]:
        """Expected validation loss after each epoch of plain SGD with one LR per epoch.

        Per coordinate, ``θ ← (1 - α h) θ + α h c̄`` at each step, where ``c̄`` is the
        mean of the batch's samples; ``m = E[θ²]`` starts at ``INIT_SCALE² = 1`` and the
        validation loss is ``0.5 Σ_i h_i m_i``. One epoch of ``S`` steps multiplies ``m`` by
        ``(1 - α h)^(2S)`` and adds ``α² h · N``, where ``N`` sums the batch-mean noise of
        its steps with weights ``w_k = (1 - α h)^(S-1-k)`` (batch ``k`` has ``b_k`` samples):

        - ``"reshuffle"`` (default): what the engine and any ordinary loop do: every
          epoch is a fresh random permutation of the 4,096 train samples cut into batches
          of ``batch_size`` (the last one smaller if it does not divide). The batches of one
          epoch partition a train set whose mean is exactly 0, so their means are negatively
          correlated and noise partly cancels within an epoch, strongly so when ``α h S`` is
          small. Exactly, ``N = Var_p(w / p) / (n - 1)`` with ``p_k = b_k / n`` and
          ``Var_p`` the ``p``-weighted variance. This is the expected loss of an actual run
          (over initial signs and shuffles), up to float32 rounding.
        - ``"replacement"``: the classic NQM (Zhang et al. 2019): every batch is drawn
          afresh with replacement, ``N = Σ_k w_k² / b_k``: gradient noise of covariance
          ``H / B`` at every step. It overstates the noise of an epoch-based run, the more
          the smaller the LR: 58x at the end of :meth:`optimal_schedule`
          (1.4e-3 instead of 2.4e-5), 1.8x for the best constant LR.

        Computed in float64, in log space (diverging LRs give large finite values or ``inf``).

        Args:
            lrs: One learning rate per epoch (any number of epochs), each ``>= 0``.
            sampling: ``"reshuffle"`` or ``"replacement"``, see above.

        Returns:
            The expected validation loss after each epoch.
        """
        lrs_t = torch.as_tensor([float(v) for v in lrs], dtype=torch.float64)
        if lrs_t.numel() == 0:
            return []
        if not bool(torch.isfinite(lrs_t).all()) or bool((lrs_t < 0).any()):
            raise ValueError(f"learning rates must be finite and >= 0, got {list(lrs)}")
        with torch.no_grad():
            log_curve = _log_expected_curve(lrs_t.log(), self.config.batch_size, _check_sampling(sampling))
        return [float(v) for v in log_curve.exp()]

    def optimal_schedule(self, sampling: Sampling = "reshuffle") -> list[float]:
        """The per-epoch LRs that minimise the expected final validation loss.

        "Optimal" is with respect to the expected dynamics of :meth:`expected_losses`
        (with the same ``sampling``), over schedules with one constant LR per epoch inside
        ``config.lr_range`` and at most ``2 / h_max = 2``, where SGD is stable along every
        coordinate. (Above it the expected dynamics would let the sharpest coordinates
        explode by dozens of orders of magnitude and cancel them exactly later; no actual
        run survives that, and the engine counts it as divergence.) An actual run matches
        the expectation, not the optimum of each seed: its final loss scatters around the
        expected one (initial signs and shuffles are random). With ``"replacement"`` the
        result optimises the classic NQM, which an epoch-based run does not follow closely.

        The log-LRs are optimised in float64 by L-BFGS (sigmoid-bounded) from three
        starts, the best constant LR, a tuned cosine and a tuned exponential decay; the
        best of the starts and the results is returned. Deterministic; cached per
        (epochs, batch size, LR range, sampling); a few seconds on one CPU thread.

        Returns:
            ``config.epochs`` learning rates, each inside ``config.lr_range``.

        Raises:
            ValueError: the config's optimizer is not plain ``"sgd"`` or ``weight_decay != 0``
                (the dynamics are those of plain SGD), or an unknown ``sampling``.
        """
        config = self.config
        if config.optimizer != "sgd" or config.weight_decay != 0:
            raise ValueError(
                "optimal_schedule covers plain SGD without weight decay only; this task has "
                f"optimizer={config.optimizer!r}, weight_decay={config.weight_decay!r}"
            )
        return list(_optimal_schedule(config.epochs, config.batch_size, config.lr_range, _check_sampling(sampling)))


# -- expected dynamics, in log space so that diverging LRs stay finite and differentiable --


def _check_sampling(sampling: str) -> str:
    if sampling not in ("reshuffle", "replacement"):
        raise ValueError(f"sampling must be 'reshuffle' or 'replacement', got {sampling!r}")
    return sampling


def _epoch_terms(log_lr: torch.Tensor, batch: int, sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log g, log n)`` of one epoch per coordinate: ``m ← g m + n``; shapes ``log_lr.shape + (d,)``."""
    h = curvatures()
    steps = -(-N_TRAIN // batch)
    sizes = torch.full((steps,), float(batch), dtype=torch.float64)
    sizes[-1] = N_TRAIN - (steps - 1) * batch
    log_lr = log_lr.unsqueeze(-1)
    q = 1.0 - log_lr.exp() * h  # per-step contraction 1 - α h
    log_abs_q = torch.log(q.abs().clamp_min(1e-300))
    growth = 2.0 * steps * log_abs_q
    # step weights w_k = q^(S-1-k), scaled by q^-(S-1) when |q| > 1 so that nothing overflows
    power = torch.arange(steps - 1, -1, -1, dtype=torch.float64)
    shift = (steps - 1) * log_abs_q.clamp_min(0.0)
    sign = torch.where((q.unsqueeze(-1) < 0) & (power % 2 == 1), -1.0, 1.0)
    w = sign * torch.exp(power * log_abs_q.unsqueeze(-1) - shift.unsqueeze(-1))
    if sampling == "replacement":
        log_sum = torch.log((w.square() / sizes).sum(-1))
    else:
        p = sizes / N_TRAIN
        u = w / p
        spread = (p * (u - w.sum(-1, keepdim=True)).square()).sum(-1)  # Σ_k p_k u_k = Σ_k w_k
        log_sum = torch.log(spread.clamp_min(1e-300)) - math.log(N_TRAIN - 1)
    log_noise = 2.0 * log_lr + h.log() + log_sum + 2.0 * shift  # α² h · Σ (noise of c̄ is 1/h)
    return growth, log_noise


def _combine(growth: torch.Tensor, log_noise: torch.Tensor, final_only: bool) -> torch.Tensor:
    """``log`` validation loss from per-epoch terms ``(..., T, d)``: after each epoch, or the last.

    After epoch ``t``: ``m_t = m_0 Π_{u<=t} g_u + Σ_{s<=t} n_s Π_{s<u<=t} g_u``, a
    log-sum-exp over ``s`` (no loop over epochs).
    """
    log_h = curvatures().log()
    log_m0 = 2.0 * math.log(INIT_SCALE)
    cum = growth.cumsum(-2)  # log Π_{u<=t} g_u
    if final_only:
        total = cum[..., -1:, :]
        log_m = torch.logsumexp(torch.cat([total + log_m0, total - cum + log_noise], -2), -2)
    else:
        epochs = growth.shape[-2]
        terms = cum.unsqueeze(-2) - cum.unsqueeze(-3) + log_noise.unsqueeze(-3)  # [..., t, s, d]
        later = torch.ones(epochs, epochs, dtype=torch.bool).triu(1).unsqueeze(-1)  # s > t
        terms = terms.masked_fill(later, -math.inf)
        log_m = torch.logsumexp(torch.cat([(cum + log_m0).unsqueeze(-2), terms], -2), -2)
    return torch.logsumexp(log_h + math.log(0.5) + log_m, -1)


def _log_expected_curve(log_lrs: torch.Tensor, batch: int, sampling: str, final_only: bool = False) -> torch.Tensor:
    """``log`` expected validation loss after each epoch for log-LRs ``(..., T)`` (or after the last)."""
    return _combine(*_epoch_terms(log_lrs, batch, sampling), final_only=final_only)


def stable_lr_limit() -> float:
    """``2 / h_max``: above it plain SGD diverges along the sharpest coordinate."""
    return 2.0 / H_MAX


@functools.lru_cache(maxsize=32)
def _optimal_schedule(epochs: int, batch: int, lr_range: tuple[float, float], sampling: str) -> tuple[float, ...]:
    lo = math.log(lr_range[0])
    hi = math.log(min(lr_range[1], stable_lr_limit()))

    def final(log_lrs: torch.Tensor) -> torch.Tensor:
        return _log_expected_curve(log_lrs, batch, sampling, final_only=True)

    def best_of(candidates: torch.Tensor) -> torch.Tensor:  # (G, T) -> (T,), in chunks to bound memory
        scores = torch.cat([final(chunk) for chunk in candidates.split(16)])
        return candidates[int(torch.nan_to_num(scores, nan=math.inf).argmin())]

    with torch.no_grad():
        grid = torch.linspace(lo, hi, 121, dtype=torch.float64).unsqueeze(-1)  # peak log-LRs
        progress = torch.arange(epochs, dtype=torch.float64) / epochs
        shapes = (  # log of the LR relative to its peak: constant, cosine, exponential decay by 1000x
            torch.zeros(epochs, dtype=torch.float64),
            torch.log(0.5 * (1.0 + torch.cos(math.pi * progress))),
            -progress * math.log(1000.0),
        )
        starts = [best_of((grid + rel).clamp(lo, hi)) for rel in shapes]

    best_log, best_score = starts[0], math.inf
    for start in starts:
        for cand in (start, _lbfgs(final, start, lo, hi)):
            with torch.no_grad():
                score = float(final(cand))
            if math.isfinite(score) and score < best_score:
                best_log, best_score = cand, score
    return tuple(float(v) for v in best_log.exp().clamp(lr_range[0], lr_range[1]))


def _lbfgs(objective, start: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Minimise ``objective(log_lrs)`` over log-LRs in ``[lo, hi]`` (sigmoid reparametrisation)."""
    frac = ((start - lo) / (hi - lo)).clamp(1e-6, 1 - 1e-6)
    z = torch.logit(frac).detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=150, tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective(lo + (hi - lo) * torch.sigmoid(z))
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    return (lo + (hi - lo) * torch.sigmoid(z)).detach()


register("NoisyQuadratic-v0", NoisyQuadratic)
