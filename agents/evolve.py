"""Meta-learn a closed-form Ψ: CMA-ES over the constants of a formula family, on a training distribution.

Usage::

    python -m agents.evolve --config agents/configs/psi_low.yaml --family settle_sign --start default --generations 20 --finalists 4  # from the default Ψ
    python -m agents.evolve --family patience --sigma 0.15 --finalists 4 --out runs/evolve-patience   # the default before it (~6 min)
    python -m agents.evolve --family best --sigma 0.15 --finalists 4 --out runs/evolve-best   # the one before that
    python -m agents.evolve --bound beta=0.8,1 --out runs/evolve-bold              # and the first
    python -m agents.evolve --generations 3 --out runs/evolve-smoke
    python -m agents.evaluate --tasks all --runs runs/evolve-smoke/formula.json
    python -m agents.evolve --config agents/configs/psi.yaml --seed 1 --rescore default runs/evolve-smoke/formula.json  # no search
    python -m agents.evolve --config agents/configs/psi_low.yaml --final-sets 3 --rescore default runs/evolve-smoke/formula.json  # the shipping rule

RL learns Ψ as a network and :mod:`agents.distill` turns it into a formula afterwards. This
script searches the formula directly. Each family (:data:`FAMILIES`, ``--family``) is bold driver
with a memory and a late anneal. ``bold``, over the ``relative`` features::

    log(α_i / α_base) = β · log(α_{i-1} / α_base) + g − a · tanh(h · Δv_i) − c · e^{k · i/T}

- With β = 1 the LR integrates: it grows by ``g`` per epoch and reacts to the last change of
  validation loss ``Δv_i = log(L_i / L_{i-1})`` the way bold driver does (up when the loss
  fell, down when it rose).
- With β < 1 it is pulled back to a level.
- The last term anneals.

``best``, over the ``relative_best`` features, splits the reaction: up by ``r · tanh(h ·
max(−Δv_i, 0))`` when the loss fell, down by ``a · tanh(h · b_i)`` while it stays above the
run's best so far, ``b_i = log(L_i / min_{j≤i} L_j)``. The other families are listed in
:data:`FAMILIES`.

The constants are searched by CMA-ES (the ``cma`` package) in the family's box.

- **Candidates.** Each generation's candidates run on the same fresh seeds of every training
  variant (paired: their differences are free of seed noise), with the base LR set off by up to
  ``base_lr_spread`` either way.
- **Fitness.** Each candidate's mean return log(L_0 / L_T) is ranked among the candidates per
  variant, and the centred ranks are averaged over variants. No task's scale or a divergence
  dominates. With ``--seeds-at-base`` K, K more seeds run at the harness's base
  LRs (the task's ``default_lr``, not set off), and their ranks are averaged with the others.
- **Validation.** Every ``--eval-every`` generations the CMA-ES mean is scored on fixed
  validation seeds (base LRs not set off, as the harness runs), and the best one is kept.
  With ``--finalists K``, the K best are scored again on ``--final-seeds`` fresh seeds, at the
  harness's base LRs and set off, and the best mean of the two is kept (:func:`pick`). With
  ``--final-sets S`` they are scored on the final seeds of ``--seed`` and of the S − 1 seeds
  after it, and ranked by the mean over the sets: the rule a default Ψ ships by is S = 3.
- **Seeds** come from their own bases, never the harness's tuning or evaluation seeds.

``--rescore FORMULA ...`` searches nothing: it scores each formula file (or shipped name), at
its own box, on the final seeds of ``--seed`` (of each of ``--final-sets`` seeds from it,
averaged) (:func:`rescore`), so that a pick can be checked on seeds no search used, paired
with the formula it would replace. Each formula after the first is set against the first (the
incumbent) per set (:func:`against_first`): with ``--final-sets`` of 2 or more it *beats* it
when the mean difference exceeds twice its standard error over the sets; on one set (a
checking set), when it is ahead. ``--generations 0`` searches nothing either: it scores the
start (the family's, or moved by ``--start`` / ``--init``) as the final pick would and writes
it as the search's result, so a hand-set formula gets the same record and ``--ship``.

Writes ``formula.json`` (loadable by ``lrenv.load_policy`` / ``load_scheduler`` /
``agents.evaluate --runs``), ``generations.csv`` (every generation's fitness, validation, inner
epochs and seconds) and ``evolve.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: parallelism comes from processes and batching

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lrenv.agents.args import dataclass_parser
from lrenv.agents.ship_default import ship_formula
from lrenv.env.config import EnvConfig
from lrenv.evaluation import write_csv
from lrenv.evaluation.executor import ProcessPool
from lrenv.evaluation.protocol import Job, PolicyRef, Slot, env_run_seed
from lrenv.evaluation.runner import Episode, run_job
from lrenv.formula import FormulaFile, formula_policy, read_formula, save_formula
from lrenv.policy import DEFAULT_POLICY, DEFAULT_POLICY_DIR, SHIPPED_POLICIES, PolicyFileError, shipped_policy_dir
from lrenv.registry import make_task
from lrenv.run_dir import write_json


@dataclass(frozen=True)
class Family:
    """A formula template over a feature set, a box for each constant, and where the search starts."""

    template: str
    bounds: dict[str, tuple[float, float]]
    start: dict[str, float]
    features: str = "relative"

    def expression(self, constants: dict[str, float]) -> str:
        """The family's formula for these constants."""
        return self.template.format(**{k: f"{v:.6g}" for k, v in constants.items()})


_BOLD = "exp({beta}*lr_ratio + {grow} - {react}*tanh({sharp}*valid_loss_change) - {anneal}*exp({speed}*progress))"
_MIXED = (
    "exp({beta}*lr_ratio + {grow} - {react}*tanh({sharp}*valid_loss_change)"
    " - {react_train}*tanh({sharp_train}*train_loss_change) - {anneal}*exp({speed}*progress))"
)
_TOLERANT = (
    "exp({beta}*lr_ratio + {grow} + {rise}*tanh({sharp}*max(-valid_loss_change, 0))"
    " - {react}*tanh({sharp}*max(valid_loss_change - {tol}, 0)) - {anneal}*exp({speed}*progress))"
)
_SPLIT = (
    "exp({beta}*lr_ratio + {grow} + {rise}*tanh({sharp}*max(-valid_loss_change, 0)) - {react}*tanh({sharp}*max(valid_loss_change, 0))"
    " - {react_train}*tanh({sharp}*max(train_loss_change, 0)) - {anneal}*exp({speed}*progress))"
)
_GAP = "exp({beta}*lr_ratio + {grow} - {react}*tanh({sharp}*valid_loss_change) + {gap}*generalisation_gap - {anneal}*exp({speed}*progress))"
_BEST = (
    "exp({beta}*lr_ratio + {grow} + {rise}*tanh({sharp}*max(-valid_loss_change, 0))"
    " - {react}*tanh({sharp}*valid_loss_above_best) - {anneal}*exp({speed}*progress))"
)
# pieces of the families that keep the best loss so far: up when the loss fell, a cut gated by
# the epochs since the best, and the anneal
_FELL = "tanh({sharp}*max(-valid_loss_change, 0))"
_PATIENT_CUT = "{react}*tanh({sharp}*valid_loss_above_best)*tanh({patience}*epochs_since_best)"
_ANNEAL = "{anneal}*exp({speed}*progress)"
_PATIENCE = f"exp({{beta}}*lr_ratio + {{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT} - {_ANNEAL})"
_GATED = f"exp({{beta}}*lr_ratio + {{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT}*(1 - tanh({{learning}}*max(-train_loss_change, 0))) - {_ANNEAL})"
_REMEMBER = f"exp(({{beta}} + {{hold}}*{_FELL})*lr_ratio + {{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT} - {_ANNEAL})"
_HYPER = (
    f"exp({{beta}}*lr_ratio + {{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT}"
    " + {push}*tanh({sharp}*(valid_loss_change_before - valid_loss_change))*tanh({feel}*lr_change)"
    f" - {_ANNEAL})"
)
_PHASED = (
    f"exp({{beta}}*lr_ratio + {{grow}} + {{rise}}*{_FELL}*(1 - {{fade}}*progress)"
    f" - {_PATIENT_CUT.replace('{sharp}', '{tolerance}')}*(1 - {{calm}}*(1 - progress))"
    f" - {_ANNEAL})"
)
_PREVIOUS = "(progress - epoch_fraction)"  # the progress one epoch earlier


def _late(at: str, now: str = "progress") -> str:
    """0 until the progress ``now`` passes ``at``, then 1."""
    return f"min(max(1000*({now} - {at}), 0), 1)"


def _settling(late: str) -> str:
    """The ``patience`` controller until ``late`` turns 1; then the LR's ratio is frozen (memory 1, no reaction)."""
    return f"({{beta}} + (1 - {{beta}})*{late})*lr_ratio + (1 - {late})*({{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT})"


def _cosine_step(at: str) -> str:
    """This epoch's step of a cosine in log LR from ``at`` to the budget's end, to e^-depth."""
    cosine = lambda now: f"cos(pi*min(max(({now} - {at})/(1 - {at}), 0), 1))"  # noqa: E731
    return f"0.5*{{depth}}*({cosine('progress')} - {cosine(_PREVIOUS)})"


def _drop_at(at: str) -> str:
    """1 at the first epoch whose progress passes ``at``, else 0: a one-epoch step of the log LR."""
    return f"({_late(f'({at})')} - {_late(f'({at})', _PREVIOUS)})"


# after the budget's fraction {settle}: the controller freezes and the level it reached follows a
# cosine to e^-depth of itself, step by step (log s(i/T) − log s((i−1)/T), so any budget T works)
_SETTLED = f"{_settling(_late('{settle}'))} + {_cosine_step('{settle}')}"
_SETTLE = f"exp({_SETTLED})"
# ``settle_step``: the controller freezes at the budget's fraction max(settle, warm/T), so a
# short budget still gets warm epochs to find the level, and the level then drops as step decay
# does: by e^-drop at once and by e^-drop2 halfway to the end
_SETTLE_AT = "max({settle}, {warm}*epoch_fraction)"
_SETTLE_STEP = f"exp({_settling(_late(_SETTLE_AT))} - {{drop}}*{_drop_at(_SETTLE_AT)} - {{drop2}}*{_drop_at(f'({_SETTLE_AT} + 1)/2')})"
# ``settle_drop``: ``settle`` that freezes at max(settle, warm/T) (at most 0.95 of the budget, so
# its cosine has epochs left), drops by e^-drop there at once and then follows its cosine
_DROP_AT = "min(max({settle}, {warm}*epoch_fraction), 0.95)"
_SETTLE_DROP = f"exp({_settling(_late(_DROP_AT))} - {{drop}}*{_drop_at(_DROP_AT)} + {_cosine_step(_DROP_AT)})"
# ``settle_plateau``: ``settle`` whose cut stays on after it settles, with its own strength:
# a loss that stays above its best once the level is frozen cuts by up to e^-plateau per epoch
_SETTLE_PLATEAU = f"exp({_SETTLED} - {_late('{settle}')}*{_PATIENT_CUT.replace('{react}', '{plateau}')})"
# ``settle_gap``: ``settle`` with one drop of e^-drop at the budget's fraction {at}, as much as the
# run overfits there: tanh(gapk * max(log(L_valid / L_train) - gap0, 0))
_OVERFIT = "tanh({gapk}*max(generalisation_gap - {gap0}, 0))"
_SETTLE_GAP = f"exp({_SETTLED} - {{drop}}*{_drop_at('{at}')}*{_OVERFIT})"
# ``settle_gap_stall``: ``settle_gap`` whose drop a run at its best validation loss holds back by
# the fraction {still}: a run that overfits by the gap but still improves keeps its level
_STALLED = "(1 - {still}*(1 - tanh({patience}*epochs_since_best)))"
_HELD_DROP = f"{{drop}}*{_drop_at('{at}')}*{_OVERFIT}*{_STALLED}"
_SETTLE_GAP_STALL = f"exp({_SETTLED} - {_HELD_DROP})"
# the ``patience`` controller's next log ratio, as ``_settling`` writes it before it settles
_CONTROL = f"{{beta}}*lr_ratio + {{grow}} + {{rise}}*{_FELL} - {_PATIENT_CUT}"


def _floored(control: str, drop: str = _HELD_DROP) -> str:
    """``settle_gap_stall`` whose ``control`` is kept, until the drop at {at}, at or above e^-floor of
    the highest LR the run has trained at (``lr_ratio_peak``); from {at} on the floor is 20 lower
    (off), so the ``drop`` and the settling go down as before."""
    floor = f"lr_ratio_peak - {{floor}} - 20*{_late('{at}')}"
    late = _late("{settle}")
    return f"exp({late}*lr_ratio + (1 - {late})*max({control}, {floor}) + {_cosine_step('{settle}')} - {drop})"


_SETTLE_FLOOR = _floored(_CONTROL)
# ``settle_latch``: the held drop stays armed from {at} for a {window} of the budget, so it comes at
# the first epoch there that overfits and is not at its best, not only if the first one past {at}
# is; it fires once: the LR it leaves is more than e^-armed below the peak, which disarms it
_ARMED = "min(max(4*(lr_ratio - lr_ratio_peak + {armed}), 0), 1)"
_LATCHED_DROP = f"{{drop}}*{_late('{at}')}*(1 - {_late('({at} + {window})')})*{_ARMED}*{_OVERFIT}*{_STALLED}"
_SETTLE_LATCH = _floored(_CONTROL, _LATCHED_DROP)
# ``settle_band``: ``settle_latch`` whose drop also needs a gap under {gap1}: a run whose validation
# loss is many times its train loss has fit its training set, and the drop only fits it further
_UNDER_GAP = "(1 - tanh({gapk1}*max(generalisation_gap - {gap1}, 0)))"
_BAND_DROP = f"{_LATCHED_DROP}*{_UNDER_GAP}"
_SETTLE_BAND = _floored(_CONTROL, _BAND_DROP)
# ``settle_sign``: ``settle_band`` whose rise has a sharpness of its own, {rsharp}: near the sign of
# the loss's fall, as bold driver grows, so a run whose loss falls slowly at a base LR far too
# small still climbs
_SIGN_FELL = _FELL.replace("{sharp}", "{rsharp}")
_SETTLE_SIGN = _floored(_CONTROL.replace(_FELL, _SIGN_FELL), _BAND_DROP)
# ``settle_climb``: ``settle_sign`` whose sharp rise is for a run climbing into LRs it has not
# trained at (an LR within e^-near of its peak); below the peak, after a cut or the drop, the rise
# has the cut's sharpness again, so a slow fall there holds the LR instead of doubling it
_AT_PEAK = "min(max(1 + 1000*(lr_ratio - lr_ratio_peak + {near}), 0), 1)"
_CLIMB_FELL = f"({_AT_PEAK}*{_SIGN_FELL} + (1 - {_AT_PEAK})*{_FELL})"
_SETTLE_CLIMB = _floored(_CONTROL.replace(_FELL, _CLIMB_FELL), _BAND_DROP)
# ``settle_fade``: ``settle_sign`` whose rise fades, by the fraction {fade}, once the validation loss
# falls by more than {big} (log) in one epoch: a fall that large (an easy task's first epochs)
# says the LR is already productive, and a rise of ×1.65 there overshoots the largest stable LR
_BIG_FALL = "(1 - {fade}*tanh(10*max(-valid_loss_change - {big}, 0)))"
_SETTLE_FADE = _floored(_CONTROL.replace(_FELL, f"{_SIGN_FELL}*{_BIG_FALL}"), _BAND_DROP)
# ``settle_ratchet``: ``settle_floor`` whose controller, once the LR is below the highest it has
# trained at (the first cut came), only cuts: its rises are capped at the LR it has
_BELOW_PEAK = "min(max(1000*(lr_ratio_peak - lr_ratio), 0), 1)"
_RATCHET = _floored(f"min({_CONTROL}, lr_ratio + 20*(1 - {_BELOW_PEAK}))")
_SETTLE_EASED = _SETTLE.replace("({grow} + ", "({grow}*(1 - {ease}*tanh({feel}*max(-train_loss_change, 0))) + ")
_SETTLE_GATED = _SETTLE.replace(_PATIENT_CUT, f"{_PATIENT_CUT}*(1 - tanh({{learning}}*max(-train_loss_change, 0)))")
_BOX = {"beta": (0.0, 1.0), "grow": (-0.5, 0.5), "react": (0.0, 1.0), "sharp": (0.0, 20.0), "anneal": (0.0, 1.0), "speed": (0.0, 8.0)}
_BEST_BOX = {"beta": (0.8, 1.0), "grow": (-0.5, 0.5), "rise": (0.0, 2.0), "react": (0.0, 2.0), "sharp": (0.0, 40.0), "anneal": (0.0, 1.0), "speed": (0.0, 8.0)}
_PATIENCE_BOX = {**_BEST_BOX, "patience": (0.0, 200.0)}


def _inserted(box: dict[str, tuple[float, float]], after: str, **extra: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """``box`` with ``extra`` constants right after ``after``: CMA-ES's coordinates follow the box's order."""
    out: dict[str, tuple[float, float]] = {}
    for name, bounds in box.items():
        out[name] = bounds
        if name == after:
            out.update(extra)
    return out


#: Each search starts at the base LR, constant: no growth, no reaction, no anneal.
_START = {"beta": 0.0, "grow": 0.0, "react": 0.0, "sharp": 5.0, "anneal": 0.0, "speed": 4.0}
#: The first default Ψ searched on ``psi.yaml`` (a ``patience`` formula at 30×, to 4 digits): where ``gated``, ``remember`` and ``phased`` start.
_PSI_FIRST = {"beta": 0.8, "grow": -0.1817, "rise": 0.8465, "react": 1.1466, "sharp": 38.59, "anneal": 0.0, "speed": 7.795, "patience": 79.81}
#: The default Ψ searched on ``psi.yaml`` at 300× (agents/PSI.md, section 14; to 4 digits): where ``hyper`` starts.
_PSI_DEFAULT = {"beta": 0.9183, "grow": -0.2930, "rise": 0.7949, "react": 0.6436, "sharp": 36.40, "anneal": 0.0, "speed": 7.940, "patience": 97.45}
#: The box of the ``settle`` families: ``patience``'s without its anneal, plus where the controller freezes and how deep the cosine goes.
_SETTLE_BOUNDS = {**{k: v for k, v in _PATIENCE_BOX.items() if k not in ("anneal", "speed")}, "settle": (0.2, 0.95), "depth": (0.0, 8.0)}
#: Where ``settle`` starts: the controller of the default Ψ above, settling at half the budget to 1 % of its level.
_SETTLE_START = {**{k: v for k, v in _PSI_DEFAULT.items() if k not in ("anneal", "speed")}, "settle": 0.5, "depth": 4.6}
#: The default Ψ of agents/PSI.md, section 15 (``settle`` from settling at 0.7; shipped until 2026-12-03): where most ``settle_*`` families start.
_SETTLE_SHIPPED = {**_SETTLE_START, "settle": 0.7}
#: The held drop of agents/PSI.md, section 18 (step 2 of the shipped default): ``settle`` from 0.7 with a 10x drop at
#: half the budget, gated by the generalisation gap and held back at the best validation loss; where ``settle_gap_stall`` starts.
_GAP_SHIPPED = {**_SETTLE_SHIPPED, "drop": 2.3, "at": 0.5, "gap0": 0.25, "gapk": 10.0, "still": 1.0}
#: The box of ``settle_gap_stall``: ``settle``'s, and the gated, held drop's size, place, gap gate and hold.
_STALL_BOUNDS = {**_SETTLE_BOUNDS, "drop": (0.0, 5.0), "at": (0.2, 0.95), "gap0": (0.0, 1.0), "gapk": (0.0, 40.0), "still": (0.0, 1.0)}
#: The default Ψ of agents/PSI.md, section 18 (the ``settle_gap_stall`` search from ``_GAP_SHIPPED``, to 6 digits): where ``settle_floor`` starts.
_STALL_SHIPPED = {
    **{"beta": 0.941231, "grow": -0.351008, "rise": 0.851297, "react": 0.685159, "sharp": 40.0, "patience": 151.471, "settle": 0.839452},
    **{"depth": 4.01423, "drop": 3.38948, "at": 0.452167, "gap0": 0.179371, "gapk": 12.5652, "still": 1.0},
}
#: The box and start of ``settle_floor`` (the section-18 default with a floor of 2), and of ``settle_latch`` and ``settle_band`` on top of it.
_FLOOR_BOUNDS = {**_STALL_BOUNDS, "floor": (0.0, 4.0)}
_FLOOR_START = {**_STALL_SHIPPED, "floor": 2.0}
_LATCH_BOUNDS = {**_FLOOR_BOUNDS, "window": (0.0, 0.5), "armed": (0.5, 4.0)}
_LATCH_START = {**_FLOOR_START, "window": 0.2, "armed": 2.5}
_BAND_BOUNDS = {**_LATCH_BOUNDS, "gap1": (0.5, 6.0), "gapk1": (0.0, 40.0)}
_BAND_START = {**_LATCH_START, "gap1": 1.5, "gapk1": 4.0}
#: ``settle_sign``'s box, and step 6 (the shipped default: ``settle_band``'s start with rsharp 1000), where its variants start.
_SIGN_BOUNDS = {**_BAND_BOUNDS, "rsharp": (0.0, 2000.0)}
_SIGN_SHIPPED = {**_BAND_START, "rsharp": 1000.0}
#: Where the search of ``bold --bound beta=0.8,1`` ended (the default Ψ before ``best``): the later families start there.
_BOLD_OPTIMUM = {"beta": 0.8, "grow": -0.0065, "react": 1.0, "sharp": 20.0, "anneal": 0.21, "speed": 1.11}
#: The families the search can run over (``--family``).
#:
#: - ``bold``: bold driver on the validation loss with a memory and a late anneal.
#: - ``mixed``: ``bold`` that also reacts to the train loss, whose change is free of overfitting's
#:   rise and of validation noise. Its memory β is kept at 0.8 or more: searches with less
#:   memory chose controllers that oscillate (agents/PSI.md, section 10).
#: - ``tolerant``: ``bold`` with separate gains for a falling and a rising validation loss, and
#:   a tolerance: a rise smaller than ``tol`` (a jitter at a large LR) cuts nothing. It starts
#:   where the ``bold`` search ended.
#: - ``split``: ``tolerant`` without the dead zone, plus a cut when the train loss rises: a
#:   rising train loss means the LR is too large, a rising validation loss alone may be
#:   overfitting. It starts where the ``bold`` search ended.
#: - ``gap``: ``bold`` plus a term in the generalisation gap log(L_valid / L_train), which
#:   tells a run that overfits (MNIST1D-MLP, where tuned step decay holds a large LR) from one
#:   that does not. It starts where the ``bold`` search ended.
#: - ``best``: over the ``relative_best`` features. Up when the validation loss fell, as
#:   ``bold``; down while it stays above the run's best so far (``valid_loss_above_best``), as
#:   ReduceLROnPlateau, so a loss that is back at its best cuts nothing. Its start has
#:   ``bold``'s gains and anneal.
#: - ``patience``: ``best`` whose cut grows with the epochs since the best (``epochs_since_best``):
#:   a loss may jitter above its best for a while, as ReduceLROnPlateau's patience allows. It
#:   starts at the pick of the ``best`` search, whose cut starts at once.
#: - ``gated``: ``patience`` whose cut fades while the train loss still falls fast
#:   (``1 − tanh(l · max(−Δt_i, 0))``): a validation loss that jitters above its best while
#:   the model still learns, as at the large LR tuned step decay holds on MNIST1D-MLP, cuts
#:   less. It starts at the first default Ψ of ``psi.yaml`` with l = 0 (no gate).
#: - ``remember``: ``patience`` whose memory grows while the validation loss falls fast
#:   (``β + m · tanh(h · max(−Δv_i, 0))``): a level that works is kept and compounds, a
#:   flat loss pulls it back as before. It starts at the first default Ψ of ``psi.yaml`` with m = 0.
#: - ``hyper``: ``patience`` over the ``relative_hyper`` features, plus the sign of a
#:   hypergradient on log LR: ``push · tanh(h · (Δv_{i−1} − Δv_i)) · tanh(f · Δlog α_i)``
#:   moves the LR on in the direction of its last move when the loss then fell faster, and
#:   back when it fell slower. A cut that helped is followed by another, not by the regrowth
#:   that a falling loss alone calls for. It starts at the default Ψ of ``psi.yaml`` with
#:   push = 0.
#: - ``settle``: ``patience`` until the budget's fraction ``settle``, then a schedule: the
#:   controller freezes and the level it found anneals by a cosine to e^−depth of itself over
#:   the rest of the budget (over the ``relative_budget`` features, whose ``epoch_fraction``
#:   1/T gives each epoch's step of the cosine). Every tuned schedule that wins anneals over
#:   its budget, and a reaction that raises the LR while the loss falls undoes an anneal it
#:   sees (agents/PSI.md, 13): here the controller finds the level, the schedule ends the run.
#:   It starts at the default Ψ of ``psi.yaml`` (without its zero anneal), settling at half
#:   the budget to 1 % of the level, as tuned WSD and step decay end.
#: - ``settle_eased``: ``settle`` whose pull towards a low level eases while the train loss
#:   still falls fast (``g · (1 − e · tanh(f · max(−Δt_i, 0)))``): a validation loss that
#:   stops falling while the model still learns (overfitting, as on MNIST1D-MLP, where tuned
#:   step decay holds 0.3) pulls the LR down less than one that stops because the LR is too
#:   large. It starts at the ``settle`` default of section 15 with e = 0.
#: - ``settle_gated``: ``settle`` whose cut fades while the train loss still falls fast, as
#:   in ``gated``. Once the clock anneals, the cut no longer has to; it only has to catch a
#:   base LR that is too large, where the train loss stalls. It starts at the
#:   ``settle`` default of section 15 (settling at 0.7) with no gate.
#: - ``settle_step``: ``settle`` ending as step decay does, not by a cosine: the controller
#:   freezes at the budget's fraction max(settle, warm/T) (a short budget keeps ``warm``
#:   epochs to find the level), the level drops by e^−drop there and by e^−drop2 halfway to
#:   the end. On MNIST1D-MLP a sudden 10× drop at half the budget gains what a cosine over
#:   the last 30 % does not (agents/PSI.md, 16). It starts at the default's controller,
#:   settling at max(0.5, 8/T), dropping 10× twice.
#: - ``settle_drop``: ``settle`` with a sudden drop where it settles, between ``settle`` (a
#:   cosine) and ``settle_step`` (two drops): the controller freezes at max(settle, warm/T),
#:   the level drops by e^−drop at once, then the cosine of ``depth`` ends the run. The drop
#:   gains on MNIST1D-MLP, the cosine on tasks still learning at half the budget
#:   (agents/PSI.md, 16). It starts at the section-15 default (no drop, no warm epochs).
#: - ``settle_plateau``: ``settle`` whose cut goes on after it settles, with its own strength
#:   ``plateau``: once the level is frozen, each epoch whose loss stays above its best (with
#:   the controller's patience) cuts by up to e^−plateau, as ReduceLROnPlateau does, on top of
#:   the cosine. A run that stalls (MNIST1D-MLP overfitting at a large LR) drops when it
#:   stalls, one still learning at half its budget (always at its best) does not (agents/PSI.md,
#:   17). It starts at the section-15 default (plateau 0).
#: - ``settle_gap``: ``settle`` with one drop by e^−drop at the budget's fraction ``at``, as
#:   large as the run overfits there (``tanh(gapk · max(log(L_valid / L_train) − gap0, 0))``).
#:   A run whose train loss has fallen far below its validation loss (MNIST1D-MLP, where tuned
#:   step decay drops 10× at half the budget) drops; one still learning at half its budget
#:   (train and validation loss together) does not (agents/PSI.md, 17). It starts at the
#:   section-15 default (drop 0).
#: - ``settle_gap_stall``: ``settle_gap`` whose drop is held back by the fraction ``still`` in a
#:   run at its best validation loss (``1 − still · (1 − tanh(patience · epochs_since_best))``,
#:   the controller's own patience). A run can overfit by the gap (MNIST1D-MLP-wide) and yet
#:   still improve (Digits-MLP at batch 32, which loses to the drop): the second keeps its level
#:   (agents/PSI.md, 18). It starts at the held drop that the shipped default was searched
#:   from (a ÷10 drop at 0.5, gap0 0.25, gapk 10, still 1).
#: - ``settle_floor``: ``settle_gap_stall`` with a floor under its controller until the drop:
#:   the LR stays at or above e^−floor of the highest LR the run has trained at
#:   (``lr_ratio_peak``, of the ``relative_peak`` features). A cut that follows a rising loss
#:   stops there, so a run holds a large LR through a jittering loss until the drop, as tuned
#:   step decay does on MNIST1D-MLP. A base LR that is too large is cut from the first epoch,
#:   so its peak is its first LR and the cuts may go e^−floor below that. It starts at the
#:   section-18 default (agents/PSI.md) with a floor of 2 (÷7.4): the shipped default Ψ since
#:   2026-12-03 (section 19).
#: - ``settle_ratchet``: ``settle_floor`` whose controller, once the LR has come below the
#:   highest it has trained at (after its first cut), only cuts: a falling loss no longer
#:   raises it, so the level it found is held flat, pulled down only by the pull and the cuts,
#:   to e^−floor of the peak, as tuned step decay holds its LR (agents/PSI.md, 19). While the
#:   LR is at its peak the controller is free, so a run whose base LR is too small still
#:   grows. It starts at the section-18 default with a floor of 1.2, set from probes.
#: - ``settle_latch``: ``settle_floor`` whose held drop stays armed from ``at`` for a ``window``
#:   of the budget: it comes at the first epoch there that overfits by the gap and is not at
#:   its best, not only when the first epoch past ``at`` happens to be. The drop leaves the LR
#:   more than e^−armed below the highest it has trained at, which disarms it, so it fires
#:   once. On MNIST1D-MLP a run whose loss is at its best at ``at`` and jitters an epoch later
#:   never dropped (agents/PSI.md, 20). It starts at the shipped default with a window of 0.2
#:   and armed 2.5 (above the floor of 2, below the drop of 3.39), set from probes.
#: - ``settle_band``: ``settle_latch`` whose drop also needs a generalisation gap under
#:   ``gap1`` (``× (1 − tanh(gapk1 · max(g − gap1, 0)))``): the drop is for a run that overfits
#:   some (MNIST-1D at half its budget: gaps of 0.2–1.0), not for one whose validation loss is
#:   many times its train loss (Digits-MLP: about 3), which has fit its training set and keeps
#:   gaining from its level (agents/PSI.md, 20). It starts at ``settle_latch``'s start with
#:   gap1 1.5 and gapk1 4, set from probes.
#: - ``settle_sign``: ``settle_band`` whose rise has a sharpness of its own, ``rsharp``
#:   (``rise · tanh(rsharp · max(−Δv, 0))``; the cut keeps ``sharp``). At ``rsharp`` 40 a loss
#:   that falls by under 1 % per epoch reads as flat, and the pull lowers the LR: from a base
#:   LR 10× or more too small the run ends near untrained. Near the sign (hundreds), any fall
#:   raises the LR, as bold driver does (agents/PSI.md, 22). It starts at ``settle_band``'s
#:   start with rsharp 40 (step 5; the shipped default, step 6, is rsharp 1000).
#: - ``settle_climb``: ``settle_sign`` whose sharp rise is for a run climbing into LRs it has
#:   not trained at (within e^−near of its peak, ``lr_ratio_peak``); below the peak, after a cut
#:   or the drop, the rise has the cut's sharpness, as in step 5. Step 6 doubles the LR on
#:   MNIST1D-MLP after its drop at falls under 1 % (agents/PSI.md, 22–23). It starts at the
#:   shipped default (step 6) with near 0.
#: - ``settle_fade``: ``settle_sign`` whose rise fades by the fraction ``fade`` once the
#:   validation loss falls by more than ``big`` in one epoch (``× (1 − fade·tanh(10·max(−Δv −
#:   big, 0)))``). A fall that large (an easy task's first epochs) says the LR is already
#:   productive; a rise of ×1.65 there overshoots the largest stable LR (Digits-MLP at batch 32
#:   set off: from 0.2 to 0.33 after a fall from 2.3 to 0.29, then a loss of 3.2; agents/PSI.md,
#:   24). It starts at the shipped default (step 6) with fade 0 and big 0.7.
#: - ``phased``: ``patience`` whose reactions depend on the budget's progress: the cut has its
#:   own sharpness (``tolerance``, so a small jitter may cut less than a jump) and is weaker
#:   early (``× (1 − calm·(1 − i/T))``), the rise fades late (``× (1 − fade·i/T)``). Tuned step
#:   decay on MNIST1D-MLP holds a large LR through a jittering loss and cuts once, late; the
#:   default cuts at the first jitter and regrows after each cut. It starts at the first
#:   default Ψ of ``psi.yaml`` with calm = fade = 0.
FAMILIES: dict[str, Family] = {
    "bold": Family(_BOLD, _BOX, _START),
    "mixed": Family(
        _MIXED,
        {**_BOX, "beta": (0.8, 1.0), "react_train": (0.0, 1.0), "sharp_train": (0.0, 20.0)},
        {**_START, "beta": 0.8, "react_train": 0.0, "sharp_train": 5.0},
    ),
    "tolerant": Family(
        _TOLERANT,
        _inserted(_BEST_BOX, after="sharp", tol=(0.0, 0.3)),
        {**_BOLD_OPTIMUM, "rise": 1.0, "tol": 0.0},  # with tol 0 its two reactions are bold's tanh(20·Δv)
    ),
    "split": Family(
        _SPLIT,
        _inserted(_BEST_BOX, after="react", react_train=(0.0, 2.0)),
        {**_BOLD_OPTIMUM, "rise": 1.0, "react_train": 0.0},
    ),
    "gap": Family(
        _GAP,
        {**_BOX, "beta": (0.8, 1.0), "react": (0.0, 2.0), "sharp": (0.0, 40.0), "gap": (-1.0, 1.0)},
        {**_BOLD_OPTIMUM, "gap": 0.0},
    ),
    "best": Family(
        _BEST,
        _BEST_BOX,
        {**_BOLD_OPTIMUM, "rise": 1.0},
        features="relative_best",
    ),
    "patience": Family(
        _PATIENCE,
        _PATIENCE_BOX,
        # the pick of best's search (the default before it): patience 100 makes its cut start at once
        {"beta": 0.811, "grow": -0.0069, "rise": 0.825, "react": 1.487, "sharp": 21.0, "anneal": 0.137, "speed": 0.113, "patience": 100.0},
        features="relative_best",
    ),
    "gated": Family(
        _GATED,
        {**_PATIENCE_BOX, "learning": (0.0, 40.0)},
        {**_PSI_FIRST, "learning": 0.0},
        features="relative_best",
    ),
    "remember": Family(
        _REMEMBER,
        _inserted(_PATIENCE_BOX, after="beta", hold=(0.0, 0.2)),
        {**_PSI_FIRST, "hold": 0.0},
        features="relative_best",
    ),
    "hyper": Family(
        _HYPER,
        {**_PATIENCE_BOX, "push": (0.0, 2.0), "feel": (0.0, 20.0)},
        {**_PSI_DEFAULT, "push": 0.0, "feel": 5.0},
        features="relative_hyper",
    ),
    "settle": Family(_SETTLE, _SETTLE_BOUNDS, _SETTLE_START, features="relative_budget"),
    "settle_eased": Family(
        _SETTLE_EASED,
        _inserted(_SETTLE_BOUNDS, after="grow", ease=(0.0, 1.0), feel=(0.0, 60.0)),
        {**_SETTLE_SHIPPED, "ease": 0.0, "feel": 40.0},
        features="relative_budget",
    ),
    "settle_gated": Family(
        _SETTLE_GATED,
        {**_SETTLE_BOUNDS, "learning": (0.0, 40.0)},
        {**_SETTLE_SHIPPED, "learning": 0.0},
        features="relative_budget",
    ),
    "settle_step": Family(
        _SETTLE_STEP,
        {**{k: v for k, v in _SETTLE_BOUNDS.items() if k != "depth"}, "warm": (0.0, 15.0), "drop": (0.0, 5.0), "drop2": (0.0, 5.0)},
        {**{k: v for k, v in _SETTLE_START.items() if k != "depth"}, "warm": 8.0, "drop": 2.3, "drop2": 2.3},
        features="relative_budget",
    ),
    "settle_drop": Family(
        _SETTLE_DROP,
        _inserted(_SETTLE_BOUNDS, after="settle", warm=(0.0, 15.0), drop=(0.0, 5.0)),
        {**_SETTLE_SHIPPED, "warm": 0.0, "drop": 0.0},
        features="relative_budget",
    ),
    "settle_plateau": Family(
        _SETTLE_PLATEAU,
        {**_SETTLE_BOUNDS, "plateau": (0.0, 5.0)},
        {**_SETTLE_SHIPPED, "plateau": 0.0},
        features="relative_budget",
    ),
    "settle_gap": Family(
        _SETTLE_GAP,
        {**_SETTLE_BOUNDS, "drop": (0.0, 5.0), "at": (0.2, 0.95), "gap0": (0.0, 1.0), "gapk": (0.0, 40.0)},
        {**_SETTLE_SHIPPED, "drop": 0.0, "at": 0.5, "gap0": 0.25, "gapk": 10.0},
        features="relative_budget",
    ),
    "settle_gap_stall": Family(_SETTLE_GAP_STALL, _STALL_BOUNDS, _GAP_SHIPPED, features="relative_budget"),
    "settle_floor": Family(_SETTLE_FLOOR, _FLOOR_BOUNDS, _FLOOR_START, features="relative_peak"),
    "settle_ratchet": Family(_RATCHET, _FLOOR_BOUNDS, {**_FLOOR_START, "floor": 1.2}, features="relative_peak"),
    "settle_latch": Family(_SETTLE_LATCH, _LATCH_BOUNDS, _LATCH_START, features="relative_peak"),
    "settle_band": Family(_SETTLE_BAND, _BAND_BOUNDS, _BAND_START, features="relative_peak"),
    "settle_sign": Family(_SETTLE_SIGN, _SIGN_BOUNDS, {**_BAND_START, "rsharp": 40.0}, features="relative_peak"),
    "settle_fade": Family(
        _SETTLE_FADE, {**_SIGN_BOUNDS, "fade": (0.0, 1.0), "big": (0.1, 3.0)}, {**_SIGN_SHIPPED, "fade": 0.0, "big": 0.7}, features="relative_peak"
    ),
    "settle_climb": Family(_SETTLE_CLIMB, {**_SIGN_BOUNDS, "near": (0.0, 2.0)}, {**_SIGN_SHIPPED, "near": 0.0}, features="relative_peak"),
    "phased": Family(
        _PHASED,
        {**_PATIENCE_BOX, "tolerance": (0.0, 40.0), "calm": (0.0, 1.0), "fade": (0.0, 1.0)},
        {**_PSI_FIRST, "tolerance": _PSI_FIRST["sharp"], "calm": 0.0, "fade": 0.0},
        features="relative_best",
    ),
}

#: Seeds of the search (training) and of its validation: apart from the harness's tuning and evaluation seeds.
TRAIN_SEED_BASE = 60_000
VALID_SEED_BASE = 70_000


@dataclass
class Args:
    config: str = field(default="agents/configs/default.yaml", metadata={"help": "a training config whose populations and env are the distribution"})
    out: str = field(default="runs/evolve", metadata={"help": "output folder"})
    generations: int = field(default=30, metadata={"help": "CMA-ES generations (0: search nothing, score the start on the final seeds and keep it)"})
    popsize: int = field(default=10, metadata={"help": "candidates per generation"})
    seeds: int = field(default=3, metadata={"help": "fresh seeds per variant and generation"})
    sigma: float = field(default=0.25, metadata={"help": "CMA-ES initial step, in units of each constant's box"})
    seeds_at_base: int = field(
        default=0, metadata={"help": "more seeds per variant and generation at the harness's base LRs (not set off); their ranks weigh as much as the others'"}
    )
    eval_every: int = field(default=3, metadata={"help": "generations between validations of the CMA-ES mean"})
    eval_seeds: int = field(default=4, metadata={"help": "validation seeds per variant"})
    finalists: int = field(default=1, metadata={"help": "validated CMA-ES means scored again at the end on --final-seeds (1: keep the best validated one)"})
    final_seeds: int = field(default=16, metadata={"help": "fresh validation seeds per variant and base-LR setting of each finalist"})
    final_sets: int = field(
        default=1,
        metadata={"help": "sets of final seeds (those of --seed, --seed+1, ...) that the final pick and --rescore average over; the shipping rule uses 3"},
    )
    workers: int = field(default=2, metadata={"help": "worker processes (0: this process)"})
    seed: int = field(default=0, metadata={"help": "seed of CMA-ES and of the episode seeds"})
    ship: bool = field(default=False, metadata={"help": "also install formula.json as the package's default Ψ (load_policy('default'))"})
    family: str = field(default="bold", metadata={"help": f"the formula family: {', '.join(FAMILIES)}"})
    start: str = field(
        default="",
        metadata={
            "help": "start at the constants of an evolved formula.json (or 'default', the shipped one) of the same family;"
            " with --finalists > 1 it competes in the final pick (as does a start moved by --init)",
            "metavar": "FORMULA",
        },
    )
    init: list[str] = field(
        default_factory=list,
        metadata={
            "help": "start a constant elsewhere than the family's start, e.g. beta=0.9 (repeatable); with --finalists > 1 the start competes in the final pick",
            "metavar": "NAME=VALUE",
        },
    )
    bound: list[str] = field(default_factory=list, metadata={"help": "narrow a constant's box, e.g. sharp=0,4 (repeatable)", "metavar": "NAME=LO,HI"})
    rescore: list[str] = field(
        default_factory=list,
        metadata={
            "help": "search nothing: score these formula files (or shipped names) on --final-seeds seeds of --seed"
            " (and of the seeds after it, with --final-sets), as the final pick does",
            "metavar": "FORMULA",
        },
    )


def parse_args(argv: list[str] | None = None) -> Args:
    parser = dataclass_parser(Args, "python -m agents.evolve", __doc__.split("\n\n")[0])
    args = Args(**vars(parser.parse_args(argv)))
    for key in ("popsize", "seeds", "eval_every", "eval_seeds", "finalists", "final_seeds", "final_sets"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    for key in ("generations", "seeds_at_base"):
        if getattr(args, key) < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(args, key)}")
    if args.popsize < 4:
        raise ValueError(f"--popsize must be at least 4 for CMA-ES, got {args.popsize}")
    if args.family not in FAMILIES:
        raise ValueError(f"--family {args.family!r}: choose one of {', '.join(FAMILIES)}")
    family = FAMILIES[args.family]
    start_point(args.init, bounds(args.bound, family), family, read_start(args.start, args.family))  # checked here, before any episode runs
    for source in args.rescore:
        read_formula_arg("--rescore", source)
    return args


def read_formula_arg(flag: str, source: str) -> FormulaFile:
    """The formula a flag names: a ``formula.json``, its folder, or a shipped name; a ``ValueError`` naming the flag if unreadable."""
    path = shipped_policy_dir(source) if source in SHIPPED_POLICIES else Path(source)
    try:
        return read_formula(path)
    except (FileNotFoundError, PolicyFileError) as exc:
        raise ValueError(f"{flag} {source!r}: {exc}") from None


def read_start(source: str, family_name: str) -> dict[str, float] | None:
    """The constants of an evolved formula (a ``formula.json``, its folder, or a shipped name) of a family; ``None`` for ``""``."""
    if not source:
        return None
    family = FAMILIES[family_name]
    saved = read_formula_arg("--start", source)
    constants = saved.fit.get("constants")
    if saved.domain.get("family") != family.template or not isinstance(constants, dict) or set(constants) != set(family.bounds):
        own = [name for name, f in FAMILIES.items() if f.template == saved.domain.get("family")]
        hint = f"pass --family {own[0]}, the family it was evolved in" if own else f"its template matches no family: {saved.domain.get('family')!r}"
        raise ValueError(f"--start {source!r}: it was not evolved in the family {family_name!r}; {hint}")
    return {name: float(constants[name]) for name in family.bounds}


def bounds(overrides: list[str], family: Family) -> dict[str, tuple[float, float]]:
    """The family's box with ``NAME=LO,HI`` overrides, each inside the family's own box."""
    out = dict(family.bounds)
    for text in overrides:
        name, _, values = text.partition("=")
        try:
            lo, hi = (float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--bound {text!r}: write NAME=LO,HI, e.g. sharp=0,4") from None
        if name not in family.bounds:
            raise ValueError(f"--bound {text!r}: unknown constant {name!r}; the family has {', '.join(family.bounds)}")
        low, high = family.bounds[name]
        if not low <= lo < hi <= high:
            raise ValueError(f"--bound {text!r}: need {low} <= LO < HI <= {high}")
        out[name] = (lo, hi)
    return out


def start_point(overrides: list[str], box: dict[str, tuple[float, float]], family: Family, start: dict[str, float] | None = None) -> dict[str, float]:
    """The family's start (or ``start``) with ``NAME=VALUE`` overrides, each inside ``box``."""
    out = dict(start or family.start)
    for text in overrides:
        name, _, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--init {text!r}: write NAME=VALUE, e.g. beta=0.9") from None
        if name not in box:
            raise ValueError(f"--init {text!r}: unknown constant {name!r}; the family has {', '.join(box)}")
        if not box[name][0] <= number <= box[name][1]:
            raise ValueError(f"--init {text!r}: {name} must lie in its box [{box[name][0]}, {box[name][1]}]")
        out[name] = number
    return out


def to_constants(x: np.ndarray, box: dict[str, tuple[float, float]]) -> dict[str, float]:
    """CMA-ES works in the unit box; a point of it as the family's constants."""
    return {name: lo + (hi - lo) * float(np.clip(v, 0.0, 1.0)) for (name, (lo, hi)), v in zip(box.items(), x)}


def to_unit(constants: dict[str, float], box: dict[str, tuple[float, float]]) -> np.ndarray:
    return np.array([float(np.clip((constants[name] - lo) / (hi - lo), 0.0, 1.0)) for name, (lo, hi) in box.items()])


def read_distribution(path: str) -> tuple[list[tuple[str, dict[str, Any]]], EnvConfig]:
    """The populations ``(task, task_config)`` of a training config, and the formula's env settings."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the config {path}: {exc}") from exc
    populations = (config or {}).get("populations") or [{"task": t} for t in (config or {}).get("tasks", [])]
    if not populations:
        raise ValueError(f"{path} names no populations (or tasks): nothing to search on")
    env = dict(config.get("env") or {})
    settings = EnvConfig(
        features="relative",
        action_mode="multiplier",
        relative_factor=float(env.get("relative_factor", 30.0)),
        base_shape="constant",
        base_lr_spread=float(env.get("base_lr_spread", 1.0)),
        divergence_penalty=float(env.get("divergence_penalty", 2.0)),
    )
    return [(p["task"], dict(p.get("task_config") or {})) for p in populations], settings


def run_episodes(exprs: list[str], variants: list, env: EnvConfig, seeds: list[int], pool: ProcessPool | None) -> list[list[list[Episode]]]:
    """Each candidate's episodes on each variant over ``seeds``: ``[V][C]`` lists, in the order of ``seeds``."""
    policies = [formula_policy(e, features=env.features, relative_factor=env.relative_factor) for e in exprs]
    jobs = []
    for task, overrides in variants:
        slots = [Slot(f"c{c}", (), s, "train", PolicyRef("object", name=f"c{c}", obj=p)) for c, p in enumerate(policies) for s in seeds]
        jobs.append(Job(task, env.replace(task_config=overrides or None), slots))
    if pool is None:
        results = [run_job(job) for job in jobs]
    else:
        handles = [pool.submit(job) for job in jobs]
        results = [[Episode(**d) for d in pool.result(h)] for h in handles]
    return [[[e for e in episodes if e.method == f"c{c}"] for c in range(len(exprs))] for episodes in results]


def run_candidates(exprs: list[str], variants: list, env: EnvConfig, seeds: list[int], pool: ProcessPool | None) -> tuple[np.ndarray, int]:
    """Mean return of each candidate on each variant ``[C, V]`` over ``seeds``, and the inner epochs spent."""
    results = run_episodes(exprs, variants, env, seeds, pool)
    scores = np.array([[np.mean([e.score for e in mine]) for mine in per_variant] for per_variant in results]).T
    epochs = sum(e.epochs for per_variant in results for mine in per_variant for e in mine)
    return scores.reshape(len(exprs), len(variants)), epochs


def centred_ranks(scores: np.ndarray) -> np.ndarray:
    """Per variant (column), ranks of the candidates scaled to [-0.5, 0.5]; averaged over variants."""
    ranks = scores.argsort(0).argsort(0) / max(len(scores) - 1, 1) - 0.5
    return ranks.mean(1)


def score_on_final_seeds(exprs: list[str], variants: list, env: EnvConfig, args: Args, pool: ProcessPool | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean returns ``[S, C, V]`` per set of final seeds, at the harness's base LRs and set off as in ``env``; inner epochs spent.

    Set ``s`` is ``--final-seeds`` seeds of their own for the seed ``--seed + s`` (``--final-sets``
    sets): what the final pick and ``--rescore`` score on. No search of ``--seed`` uses them.
    """
    at_base, set_off, spent = [], [], 0
    for s in range(args.final_sets):
        seeds = [env_run_seed(VALID_SEED_BASE + 1000 * (args.seed + s) + 500 + k) for k in range(args.final_seeds)]
        base, spent_base = run_candidates(exprs, variants, env.replace(base_lr_spread=1.0), seeds, pool)
        off, spent_off = run_candidates(exprs, variants, env, seeds, pool)
        at_base.append(base)
        set_off.append(off)
        spent += spent_base + spent_off
    return np.stack(at_base), np.stack(set_off), spent


def _set_means(at_base: np.ndarray, set_off: np.ndarray) -> np.ndarray:
    """One candidate's mean return ``(base + set off) / 2`` on each set of final seeds: ``[S, V]`` inputs, ``[S]`` out."""
    return (at_base.mean(-1) + set_off.mean(-1)) / 2


def _per_set(means: np.ndarray, args: Args) -> str:
    """The per-set means of :func:`_set_means` for the log (nothing for a single set)."""
    if args.final_sets == 1:
        return ""
    return " (" + ", ".join(f"seed {args.seed + s}: {m:.4f}" for s, m in enumerate(means)) + ")"


def rescore(args: Args, variants: list, env: EnvConfig) -> list[dict[str, Any]]:
    """Each ``--rescore`` formula's mean return on the final pick's seeds (:func:`score_on_final_seeds`).

    Each formula acts with its own features and box (``relative_factor``); the episodes (tasks,
    seeds, base LRs drawn from the seeds) are the same for all, so the differences are paired.
    """
    rows = []
    pool = ProcessPool(args.workers) if args.workers > 0 else None
    try:
        for source in args.rescore:
            saved = read_formula_arg("--rescore", source)
            own = env.replace(features=saved.formula.features, relative_factor=saved.relative_factor)
            sets_base, sets_off, _ = score_on_final_seeds([saved.formula.expression], variants, own, args, pool)
            at_base, set_off = sets_base[:, 0].mean(0), sets_off[:, 0].mean(0)  # [V], averaged over the sets
            per_set = _set_means(sets_base[:, 0], sets_off[:, 0])
            row = {"formula": source, "relative_factor": saved.relative_factor}
            row.update(return_base_lr=float(at_base.mean()), return_set_off=float(set_off.mean()))
            row["return"] = (row["return_base_lr"] + row["return_set_off"]) / 2
            row.update({f"return_seed_{args.seed + s}": float(m) for s, m in enumerate(per_set)})
            row.update({f"base_{v}": float(at_base[v]) for v in range(len(variants))})
            row.update({f"set_off_{v}": float(set_off[v]) for v in range(len(variants))})
            rows.append(row)
            scores = f"{row['return_base_lr']:.4f} at the base LRs, {row['return_set_off']:.4f} set off, mean {row['return']:.4f}"
            print(f"  {source} (x{saved.relative_factor:g}): {scores}{_per_set(per_set, args)}", flush=True)
    finally:
        if pool is not None:
            pool.close()
    return rows


def against_first(rows: list[dict[str, Any]], args: Args) -> None:
    """Set each rescored formula after the first against the first, per set of final seeds (paired).

    Adds ``diff_vs_first`` (the mean of the per-set differences of the mean return),
    ``diff_se`` (its standard error over the sets) and ``beats_first``: the difference exceeds
    twice its standard error, so a win within the spread between the sets is no win. One set
    has no spread: there it beats the first by being ahead at all, which is what the shipping
    rule's checking set asks.
    """
    if len(rows) < 2:
        return
    names = [f"return_seed_{args.seed + s}" for s in range(args.final_sets)]
    first = np.array([rows[0][n] for n in names])
    rows[0].update(diff_vs_first=0.0, diff_se=0.0, beats_first=False)  # rescore.csv takes its columns from the first row
    for row in rows[1:]:
        diffs = np.array([row[n] for n in names]) - first
        se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
        margin = 2 * se if len(diffs) > 1 else 0.0
        row.update(diff_vs_first=float(diffs.mean()), diff_se=se, beats_first=bool(diffs.mean() > margin))
        if len(diffs) > 1:
            how = f" ± {se:.4f} over {len(diffs)} sets; " + ("beats it by more than" if row["beats_first"] else "does not beat it by") + " twice that"
        else:
            how = " on one set; " + ("ahead" if row["beats_first"] else "not ahead")
        print(f"  {row['formula']} against {rows[0]['formula']}: {row['diff_vs_first']:+.4f}{how}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    args = parse_args(argv)
    start = time.perf_counter()
    variants, env = read_distribution(args.config)
    if args.rescore:
        sets = f"--seed {args.seed}" if args.final_sets == 1 else f"each of the seeds {args.seed}..{args.seed + args.final_sets - 1}"
        print(f"Scoring {len(args.rescore)} formula(s) on {len(variants)} variants x {args.final_seeds} final seeds of {sets}", flush=True)
        rows = rescore(args, variants, env)
        against_first(rows, args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_csv(Path(args.out) / "rescore.csv", rows)
        print(f"Wrote {Path(args.out) / 'rescore.csv'} in {time.perf_counter() - start:.0f} s")
        return {"rescored": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    family = FAMILIES[args.family]
    env = env.replace(features=family.features)
    valid_env = env.replace(base_lr_spread=1.0)  # the harness's base LRs
    box = bounds(args.bound, family)
    if args.generations:
        print(f"CMA-ES over {len(box)} constants of {family.template}", flush=True)
        print(f"on {len(variants)} variants, {args.popsize} candidates x {args.seeds} seeds per generation", flush=True)
    else:
        print(f"No search (--generations 0): the start of {args.family}, scored on {len(variants)} variants", flush=True)
    first = start_point(args.init, box, family, read_start(args.start, args.family))
    strategy = _strategy(first, box, args) if args.generations else None
    pool = ProcessPool(args.workers) if args.workers > 0 else None
    rows: list[dict[str, Any]] = []
    validated: list[tuple[float, dict[str, float], int]] = []  # (validation return, constants, generation)
    spent = 0
    valid_seeds = [env_run_seed(VALID_SEED_BASE + 1000 * args.seed + k) for k in range(args.eval_seeds)]
    try:
        for g in range(args.generations):
            t = time.perf_counter()
            xs = strategy.ask()
            exprs = [family.expression(to_constants(x, box)) for x in xs]
            seeds = [env_run_seed(TRAIN_SEED_BASE + 10_000 * args.seed + g * args.seeds + k) for k in range(args.seeds)]
            scores, epochs = run_candidates(exprs, variants, env, seeds, pool)
            spent += epochs
            fitness = centred_ranks(scores)
            if args.seeds_at_base:  # ranked apart, then averaged: both settings weigh alike whatever their return scales
                at_base = [env_run_seed(TRAIN_SEED_BASE + 10_000 * args.seed + 5_000 + g * args.seeds_at_base + k) for k in range(args.seeds_at_base)]
                scores_base, epochs = run_candidates(exprs, variants, valid_env, at_base, pool)
                spent += epochs
                fitness = (fitness + centred_ranks(scores_base)) / 2
            strategy.tell(xs, list(-fitness))  # cma minimises
            row: dict[str, Any] = {"generation": g, "best_fitness": float(fitness.max()), "mean_return": float(scores.mean()), "inner_epochs": spent}
            row.update({"validation_return": float("nan"), **{f"valid_{v}": float("nan") for v in range(len(variants))}})  # every row has every column
            if g % args.eval_every == args.eval_every - 1 or g == args.generations - 1:
                mean = to_constants(strategy.mean, box)
                valid, epochs = run_candidates([family.expression(mean)], variants, valid_env, valid_seeds, pool)
                spent += epochs
                per_variant = {f"valid_{v}": float(valid[0, v]) for v in range(len(variants))}
                row.update({"validation_return": float(valid.mean()), **per_variant, "inner_epochs": spent})
                validated.append((float(valid.mean()), mean, g))
            row.update({k: round(v, 4) for k, v in to_constants(strategy.mean, box).items()})
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            write_csv(out / "generations.csv", rows)
            note = f", validation {row['validation_return']:.4f}" if np.isfinite(row["validation_return"]) else ""
            print(f"  gen {g}: mean return {row['mean_return']:.4f}{note}; {spent} inner epochs, {row['seconds']:.0f} s", flush=True)
        best, finals, epochs = pick(validated, args, family, variants, env, pool, first if args.start or args.init or not args.generations else None)
        spent += epochs
    finally:
        if pool is not None:
            pool.close()
    constants = best[1]
    tasks = list(dict.fromkeys(t for t, _ in variants))
    configs = {t: make_task(t, **next(o for n, o in variants if n == t)).config for t in tasks}
    wall = time.perf_counter() - start
    fit = {"validation_return": best[0], "generation": best[2], "constants": constants, "inner_epochs": spent, "wall_time_s": round(wall, 1)}
    fit["final_sets"] = [args.seed + s for s in range(args.final_sets)]
    if finals:
        fit["finalists"] = finals
    domain = {"variants": [{"task": t, "task_config": o} for t, o in variants], "base_lr_spread": env.base_lr_spread, "family": family.template, "bounds": box}
    path = save_formula(
        out / "formula.json", family.expression(constants), name=f"evolved-{Path(args.config).stem}", features=family.features,
        relative_factor=env.relative_factor, tasks=tasks, task_configs=configs, domain=domain, fit=fit,
        source=f"agents.evolve --config {args.config} --family {args.family} --seed {args.seed}",
    )  # fmt: skip
    if args.ship:
        command = f"python -m agents.evolve {' '.join(argv if argv is not None else sys.argv[1:])}"
        shipped = ship_formula(path, DEFAULT_POLICY_DIR, DEFAULT_POLICY, source=command)
        print(f"Shipped it as {shipped}")
    plot(rows, out / "evolve.png")
    write_json(out / "summary.json", fit)
    again = f", {max(f['final_return'] for f in finals):.4f} on the final seeds" if finals else ""
    kept = "its start" if best[2] < 0 else f"the CMA-ES mean of generation {best[2]} (validation return {best[0]:.4f}{again})"
    print(f"Kept {kept}: {family.expression(constants)}")
    print(f"Wrote {path}, generations.csv, evolve.png; {spent} inner epochs in {wall:.0f} s")
    return fit


def _strategy(first: dict[str, float], box: dict[str, tuple[float, float]], args: Args):
    """CMA-ES in the unit box, started at ``first``."""
    try:
        import cma
    except ImportError as exc:
        raise SystemExit('agents.evolve needs cma: pip install "lrenv[fit]" (or pip install cma)') from exc
    options = {"bounds": [0, 1], "popsize": args.popsize, "seed": args.seed + 1, "verbose": -9}
    return cma.CMAEvolutionStrategy(to_unit(first, box), args.sigma, options)


def pick(
    validated: list[tuple[float | None, dict[str, float], int]],
    args: Args,
    family: Family,
    variants: list,
    env: EnvConfig,
    pool: ProcessPool | None,
    start: dict[str, float] | None = None,
) -> tuple[tuple[float | None, dict[str, float], int], list[dict[str, Any]], int]:
    """The kept constants: the best validated mean, or with ``--finalists`` K > 1 the best of the K best on fresh seeds.

    The in-search validation has few seeds, and neighbouring means differ by about its noise.
    Each finalist is scored again on ``--final-seeds`` seeds of its own (on each of
    ``--final-sets`` sets), at the harness's base LRs and with base LRs set off as in training,
    and ranked by the mean of the two returns over the sets. A chosen ``start`` (``--start``,
    ``--init``, or any start with ``--generations 0``) competes as a finalist of generation -1:
    a search that finds nothing better on the final seeds returns where it started.

    Returns:
        ``(validation return, constants, generation)`` of the pick, the finalists' scores, inner epochs spent.
    """
    ranked = sorted(validated, key=lambda v: -v[0])
    if ranked and (args.finalists == 1 or (len(ranked) == 1 and start is None)):
        return ranked[0], [], 0
    finalists = ranked[: args.finalists] + ([(None, start, -1)] if start is not None else [])
    exprs = [family.expression(constants) for _, constants, _ in finalists]
    sets_base, sets_off, spent = score_on_final_seeds(exprs, variants, env, args, pool)
    finals = []
    for c, (v, constants, g) in enumerate(finalists):
        base, off = sets_base[:, c], sets_off[:, c]  # [S, V]
        per_set = _set_means(base, off)
        f = {"generation": g, "validation_return": v, "final_return_base_lr": float(base.mean()), "final_return_set_off": float(off.mean())}
        f["final_return"] = (f["final_return_base_lr"] + f["final_return_set_off"]) / 2
        if args.final_sets > 1:
            f["final_return_per_set"] = [float(m) for m in per_set]
        finals.append({**f, "constants": constants})
        label = "the start" if g < 0 else f"finalist of generation {g}"
        print(f"  {label}: {f['final_return_base_lr']:.4f} at the base LRs, {f['final_return_set_off']:.4f} set off{_per_set(per_set, args)}", flush=True)
    chosen = max(range(len(finals)), key=lambda k: finals[k]["final_return"])
    return finalists[chosen], finals, spent


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["inner_epochs"] for r in rows], [r["mean_return"] for r in rows], ".-", label="candidates' mean return (training seeds)")
    valid = [r for r in rows if np.isfinite(r["validation_return"])]
    ax.plot([r["inner_epochs"] for r in valid], [r["validation_return"] for r in valid], "o-", label="CMA-ES mean, validation seeds")
    ax.set_xlabel("inner epochs")
    ax.set_ylabel("return log(L_0 / L_T), mean over variants")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        sys.exit(f"error: {exc}")
