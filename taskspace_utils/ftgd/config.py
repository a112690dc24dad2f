"""FTGD settings: :class:`FTGDConfig` (every field, its default and the measurement behind it),
the controls it can run (:data:`CONTROLS`) and the error raised when a run diverges.

Objectives (the loss minimised is minus these, on the pairs of one step's batch):

    "margin"      maximise  m(theta) = mean_i [ log p(g_i) - log p(b_i) ]
                  (its gradient on the batch is the batch's differential itself)
    "logsigmoid"  maximise  mean_i log sigma(beta * m_i(theta))   (bounded above by 0)
    "lm_good"     (the control) maximise mean_i log p(g_i) over the good sentences

Convention: ``log p`` is the BOS-prefixed sum of token log-probabilities of
:mod:`taskspace_utils.scoring`; margins are in nats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..encoding import VARIANTS

__all__ = ["CONTROLS", "FTGDConfig", "FTGDDivergedError"]

#: The four runs of the controls comparison, FTGD first.
CONTROLS = ("ftgd", "all_params", "random_mask", "lm_good")
_OBJECTIVES = ("margin", "logsigmoid")
_OPTIMIZERS = ("adam", "sgd")
_MASK_MODES = ("fixed", "per_step")


class FTGDDivergedError(RuntimeError):
    """The loss (or a gradient) became NaN/inf or exceeded ``FTGDConfig.max_abs_loss``; the message
    names the task and the step. The model is restored before this is raised."""


@dataclass(frozen=True)
class FTGDConfig:
    """Settings of one FTGD run (notebook ``03_ftgd``; every field is a plain literal there).

    Defaults were chosen by measurement (``benchmarks/bench_ftgd.py --sweep``) on the offline suite's
    ``tiny-s`` (the size built in time; 2.9M parameters), 5 BLiMP tasks from 5 phenomena
    (anaphor_gender_agreement, regular_plural_subject_verb_agreement_1, npi_present_1, wh_island,
    passive_1), 100 train / 100 test pairs, 500 held-out corpus sentences. One setting varied at a
    time; numbers are means over the 5 tasks: target accuracy gain (points) / relative validation
    perplexity change. The margin objective is unbounded, so the question is how far to push: we
    took the largest step that keeps perplexity damage at a few per cent.

    Attributes:
        objective: ``"margin"`` (default) maximises the mean margin ``log p(g) - log p(b)``, whose
            gradient is the differential itself; ``"logsigmoid"`` maximises
            ``mean log sigmoid(beta * margin)``, which saturates once a pair is well separated
            (measured at lr=1e-4: +19.6 / +1.6% vs. margin's +21.6 / +4.0%, but a larger loss on
            the other tasks, -1.6 vs. -0.6 points; at lr=1e-3 the bound matters: +27.2 / +21% vs.
            margin's +27.8 / +1271%).
        beta: inverse temperature of ``"logsigmoid"`` (1.0: margins are in nats; ignored by
            ``"margin"``).
        k: fraction of all parameters in the subnetwork (``round(k * n_params)`` entries; the
            same count for ``"random_mask"``). Default 0.01: k=0.001 +14.4 / +0.3%, 0.01
            +21.6 / +4.0%, 0.1 +24.8 / +21%.
        per_module: choose the top-k within every parameter tensor (k of each) instead of
            globally (see :func:`taskspace_utils.gradients.subnetwork_masks`).
        mask_mode: ``"fixed"`` (default): the mask is chosen once, from the task differential of
            the training pairs, before the first step (the paper's subnetwork; one top-k instead
            of one per step). ``"per_step"``: re-chosen at every step from ``|gradient|`` of the
            step's objective on its batch (a fresh random draw for ``"random_mask"``); the delta
            covers the union of the masks, and the optimiser state is dense. Not in the sweep.
        optimizer: ``"adam"`` (default; torch Adam, betas (0.9, 0.999), eps 1e-8, no weight decay)
            or ``"sgd"`` (plain SGD: the first update is ``lr * masked differential``). Adam is the
            default because the differential's scale differs by orders of magnitude across
            tensors, which one SGD learning rate cannot serve: SGD at lr=0.01 drove the mean
            margin of npi_present_1 to 11,461 nats by step 47 (stopped by the explode guard).
        lr: learning rate. Default 1e-4 (Adam): 3e-5 +13.6 / +0.3%, 1e-4 +21.6 / +4.0%,
            3e-4 +25.4 / +26%, 1e-3 +27.8 / +1271% (perplexity x13.7).
        steps: optimiser steps. Default 50 (50 x 16 = 800 pair presentations = 8 epochs of 100
            pairs): 25 steps +16.2 / +1.0%, 50 +21.6 / +4.0%, 100 +23.0 / +13%.
        batch_size: pairs per step, drawn without replacement from seeded permutations of the
            training pairs (a new permutation every epoch). Default 16: batch 32 gave the same
            gain (+21.6 / +4.3%) at twice the time.
        seed: seed of the batch order and of the random mask (same seed, same result, bitwise).
            Batches and random masks use separate streams, so all controls see the same batches.
        max_abs_loss: the explode guard: a step whose loss is not finite, whose gradient is not
            finite, or whose ``|loss|`` exceeds this stops the run with :class:`FTGDDivergedError`
            (naming task and step). Default 1e4 nats: every Adam run of the sweep stayed below
            210 nats (largest ``|loss|``: 206 at k=0.1, lr=1e-3), the diverging SGD run crossed it.
        variant: ``"sentence"`` (default): margins over the whole sentences; ``"critical"``: only
            the tokens from the first difference between good and bad on (see
            :func:`taskspace_utils.gradients.batch_margins`; pairs without critical tokens are
            left out with a warning). The mask's differential uses the same variant.
            ``"lm_good"`` always scores whole good sentences.
        control: ``"ftgd"`` (default), ``"all_params"``, ``"random_mask"`` or ``"lm_good"``
            (module docstring).
    """

    objective: str = "margin"
    beta: float = 1.0
    k: float = 0.01
    per_module: bool = False
    mask_mode: str = "fixed"
    optimizer: str = "adam"
    lr: float = 1e-4
    steps: int = 50
    batch_size: int = 16
    seed: int = 0
    max_abs_loss: float = 1e4
    variant: str = "sentence"
    control: str = "ftgd"

    def __post_init__(self):
        checks = [
            ("objective", self.objective, _OBJECTIVES),
            ("optimizer", self.optimizer, _OPTIMIZERS),
            ("mask_mode", self.mask_mode, _MASK_MODES),
            ("variant", self.variant, VARIANTS),
            ("control", self.control, CONTROLS),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"FTGDConfig.{name}={value!r}: use one of {allowed}")
        if not 0.0 < float(self.k) <= 1.0:
            raise ValueError(f"FTGDConfig.k={self.k!r}: a fraction of the parameters in (0, 1]")
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"FTGDConfig.steps={self.steps}, batch_size={self.batch_size}: both must be >= 1")
        if not float(self.lr) > 0 or not float(self.beta) > 0 or not float(self.max_abs_loss) > 0:
            raise ValueError(f"FTGDConfig: lr={self.lr}, beta={self.beta}, max_abs_loss={self.max_abs_loss} must be > 0")

    def replace(self, **changes) -> "FTGDConfig":
        """A copy with some fields changed (e.g. ``config.replace(control="lm_good")``)."""
        return dataclasses.replace(self, **changes)

    @property
    def uses_mask(self) -> bool:
        """Whether the run updates a subset of the parameters (``ftgd`` and ``random_mask``)."""
        return self.control in ("ftgd", "random_mask")

