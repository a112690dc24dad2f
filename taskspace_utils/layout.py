"""Where every result of a unit and of a run lives: the one place that names the files.

A *run* folder (``run_all.py --out``) holds one *unit* folder per model@revision and the
comparison across them. Every stage writes into its own folder, beside the ``config.json`` that
produced it, with its figures in ``figures/`` inside it::

    <run>/                                   RunLayout
    ├── plan.json, run.json, report.html     the plan, what ran, the report
    ├── suite/                               the offline suite when the profile builds it here
    ├── comparison/                          notebook 05: config.json, one CSV per table, figures/
    └── <model@revision>/                    UnitLayout (one unit)
        ├── unit.json, 0N_<stage>.ipynb      the runner's record and the executed notebooks
        ├── data/                            notebook 01: config.json, pairs.parquet,
        │                                    model_info.json, eval_blimp.csv, figures/
        ├── gradients_<variant>/             notebook 02: config.json, differentials/ (top entries of
        │                                    each D_t), gram.safetensors, the gradient and mask-overlap
        │                                    spaces, statistics, figures/
        ├── ftgd/                            notebook 03: config.json, rows/, controls.csv,
        │                                    controls_mean.csv, figures/
        └── probing/                         notebook 04: config.json, the transfer spaces, rows/,
            │                                deltas/, alignment tables, figures/
            ├── baseline/                    the same probe of the untrained (step-0) model
            ├── seed<N>/                     the same probe with a second probing seed
            └── differentials/               task differentials when notebook 02 did not run

Stages take these folders as arguments; nothing searches several places for another stage's
output. Task names become file names only through :func:`task_file_stem`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONFIG", "FIGURES", "SUITE_SIZES", "SUITE_SEEDS", "SUITE_MODELS", "SUITE_NAME_PATTERN", "is_suite_model", "suite_root", "UnitLayout", "RunLayout", "task_file_stem", "unit_layout", "run_layout"]

#: The name of the config file of every stage folder.
CONFIG = "config.json"
#: The figures' sub-folder of every stage folder.
FIGURES = "figures"

#: The offline suite's sizes, and its model names: ``tiny-s``, ``tiny-m``, ``tiny-l`` (and any
#: ``tiny-*`` size a user builds), optionally with ``@stepN``. Defined here, in a module that imports
#: neither torch nor transformers, so that checking a plan stays fast (``pipeline.validate``).
SUITE_SIZES = ("tiny-s", "tiny-m", "tiny-l")
#: Extra pre-training seeds of the smallest size (PolyPythias' design: the seed changes the
#: initialisation and the data order): ``tiny-s-seed1`` is ``tiny-s`` trained with seed 1 instead
#: of the default seed 0. They give the noise floor of the size and checkpoint contrasts.
SUITE_SEEDS = ("tiny-s-seed1", "tiny-s-seed2")
#: Every model the default suite build makes: the sizes, then the extra seeds.
SUITE_MODELS = SUITE_SIZES + SUITE_SEEDS
#: ``tiny-s``, ``tiny-s-seed1``, ``tiny-m@step500``, ``tiny-s-seed2@step64``: group ``size`` is the
#: folder name (size and seed), ``base`` the size, ``seed`` the seed number (absent: seed 0).
SUITE_NAME_PATTERN = re.compile(
    r"^(?P<size>(?P<base>tiny-[A-Za-z0-9_]+?)(?:-seed(?P<seed>\d+))?)(?:@step(?P<step>\d+))?$")



def is_suite_model(name: str) -> bool:
    """Whether ``name`` is a model the default suite build knows how to make: a size of
    :data:`SUITE_SIZES`, optionally with ``-seedK`` (``tiny-s-seed3`` too), without ``@step``."""
    match = SUITE_NAME_PATTERN.match(str(name))
    return bool(match) and match["step"] is None and match["base"] in SUITE_SIZES


_SAFE_TASK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def task_file_stem(task: str) -> str:
    """``task`` as a file-name stem; ``ValueError`` for a name that is not a safe file name
    (empty, a path separator, a leading dot, ``..``, characters other than letters, digits,
    ``_ . -``)."""
    task = str(task)
    if not _SAFE_TASK.match(task) or ".." in task:
        raise ValueError(f"task name {task!r} cannot be a file name (use letters, digits, '_', '.', '-')")
    return task


def suite_root() -> Path:
    """Folder of the offline suite: ``$TASKSPACE_SUITE_DIR`` or ``~/.cache/taskspace/suite``."""
    env = os.environ.get("TASKSPACE_SUITE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "taskspace" / "suite"


def figures(stage_dir: str | Path) -> Path:
    """``stage_dir/figures``, created."""
    path = Path(stage_dir) / FIGURES
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class UnitLayout:
    """The files of one unit (one model at one revision); see the module docstring."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # the runner's record
    @property
    def record(self) -> Path:
        return self.root / "unit.json"

    # notebook 01
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pairs(self) -> Path:
        return self.data / "pairs.parquet"

    @property
    def model_info(self) -> Path:
        return self.data / "model_info.json"

    @property
    def eval_blimp(self) -> Path:
        return self.data / "eval_blimp.csv"

    # notebook 02
    def gradients(self, variant: str = "sentence") -> Path:
        return self.root / f"gradients_{variant}"

    # notebook 03
    @property
    def ftgd(self) -> Path:
        return self.root / "ftgd"

    # notebook 04
    @property
    def probing(self) -> Path:
        return self.root / "probing"

    @property
    def probing_baseline(self) -> Path:
        return self.probing / "baseline"

    def probing_seed(self, seed: int) -> Path:
        return self.probing / f"seed{int(seed)}"

    @property
    def probing_differentials(self) -> Path:
        return self.probing / "differentials"

    def differentials_source(self, variant: str = "sentence") -> Path:
        """The unit's gradient-stage folder: notebook 02's ``gradients_<variant>/`` when it ran,
        else notebook 04's own ``probing/differentials/``."""
        own = self.gradients(variant)
        return own if own.is_dir() else self.probing_differentials


@dataclass(frozen=True)
class RunLayout:
    """The files of a run; see the module docstring."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def record(self) -> Path:
        return self.root / "run.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def suite(self) -> Path:
        return self.root / "suite"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    def unit(self, name: str) -> UnitLayout:
        return UnitLayout(self.root / name)

    def units(self) -> list[UnitLayout]:
        """Every unit folder with notebook 01's ``data/model_info.json``, sorted by name."""
        return [UnitLayout(p.parent.parent) for p in sorted(self.root.glob("*/data/model_info.json"))]


def unit_layout(root: str | Path) -> UnitLayout:
    """:class:`UnitLayout` of a unit folder (the notebooks' ``out_dir``)."""
    return UnitLayout(Path(root))


def run_layout(root: str | Path) -> RunLayout:
    """:class:`RunLayout` of a run folder."""
    return RunLayout(Path(root))
