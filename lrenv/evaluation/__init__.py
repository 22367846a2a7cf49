"""A fair comparison of learning-rate schedules: equal-budget tuning, paired evaluation, statistics.

``lrenv.evaluation.compare(tasks, contenders=[...])`` tunes every baseline of
:data:`lrenv.baselines.BASELINES` with the same budget, evaluates every method on paired
seeds and returns :class:`Results` (tables, CSV). The modules, in the order data flows:

- ``protocol``: seeds, contenders (learned policies, reference schedules), jobs (populations);
- ``tuning``: the equal-budget tuning grid and the choice of the best setting;
- ``runner``: one population, driven epoch by epoch through the env's own episode code;
- ``cache`` and ``executor``: finished populations on disk; where populations run (this
  process, local worker processes, or Ray tasks through ``ray_pool``), progress;
- ``compare``: the two stages (tuning, then evaluation) over all tasks;
- ``results``: statistics (accurate, fast, reliable), ranks, Markdown and CSV.
"""

from lrenv.evaluation.cache import default_cache_dir
from lrenv.evaluation.compare import compare
from lrenv.evaluation.protocol import (
    DEFAULT_EVAL_SEEDS,
    DEFAULT_POPULATION,
    DEFAULT_TRIALS,
    DEFAULT_TUNE_SEEDS,
    EVAL_SEED_BASE,
    TUNE_SEED_BASE,
    Contender,
    Job,
    PolicyRef,
    Slot,
    env_run_seed,
    eval_seeds,
    load_run,
    optimal_contender,
    tune_seeds,
)
from lrenv.evaluation.results import Results, write_csv
from lrenv.evaluation.runner import Episode, run_job
from lrenv.evaluation.tuning import LR_SPAN, lr_grid, tuning_grid

__all__ = [
    "DEFAULT_EVAL_SEEDS",
    "DEFAULT_POPULATION",
    "DEFAULT_TRIALS",
    "DEFAULT_TUNE_SEEDS",
    "EVAL_SEED_BASE",
    "LR_SPAN",
    "TUNE_SEED_BASE",
    "Contender",
    "Episode",
    "Job",
    "PolicyRef",
    "Results",
    "Slot",
    "compare",
    "default_cache_dir",
    "env_run_seed",
    "eval_seeds",
    "load_run",
    "lr_grid",
    "optimal_contender",
    "run_job",
    "tune_seeds",
    "tuning_grid",
    "write_csv",
]
