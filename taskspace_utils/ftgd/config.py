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
    """Settings of one FTGD run (notebook ``03_ftgd``; every field is a plain literal there). The
    defaults are also the probing stage's (notebook 04, :data:`taskspace_utils.probing.PROBING_FTGD`):
    one setting for both notebooks.

    **The learning rate and the steps x batch size** (``lr=1e-4``, ``steps=50``,
    ``batch_size=16``) were chosen for both notebooks on the trade-off that matters to both: the
    gain on the tuned task against the damage to the language model (FTGD's premise: the task
    changes, the language model does not; transfer read from a damaged model mixes general
    disruption into the task space) against time. ``benchmarks/bench_ftgd_premise.py`` on the
    offline suite's ``tiny-m`` (final step, 4.9M parameters), 4 tasks of 4 phenomena
    (anaphor_gender_agreement, regular_plural_subject_verb_agreement_1, npi_present_1, wh_island),
    100 train / 100 test pairs (seed 0), 300 held-out sentences evenly spaced over the corpus's
    validation split (:func:`~taskspace_utils.ftgd.validation_texts`), k = 1 %, Adam, margin
    objective, mask differential given. Gains: mean self-transfer (accuracy as a fraction; margin
    in nats); ``ppl``: relative validation-perplexity change per tuned task (``tuned / base - 1``);
    ``CPU s``: process CPU seconds of ``tune_task`` per task, 1 thread (2026-11-28; ``uptime`` load
    average 2.8-3.2 on the 2 cores, so CPU seconds are the figures to read; equal step counts
    differ by up to 20 %; a second run gave the same gains and changes, CPU seconds within 27 %,
    their order 10 x 20 < 15 x 20 < 20 x 20 < 50 x 16 unchanged)::

        lr, steps x batch       acc gain  margin  ppl mean  ppl median  ppl min .. max   CPU s
        1e-3, 20 x 20 (old 04)   +0.225   +17.42   +65.3 %    +62.9 %    +9.1 .. +126 %   2.73
        1e-3, 10 x 20 (quick)    +0.213    +9.06   +22.3 %    +26.5 %    +2.5 .. +34 %    1.47
        1e-4, 50 x 16 (03)       +0.225    +5.12    +5.8 %     +6.8 %    +0.5 .. +9.2 %   5.51
        3e-4, 20 x 20            +0.228    +5.98    +8.6 %    +10.4 %    +0.9 .. +12.7 %  3.23
        1e-4, 20 x 20            +0.187    +2.06    +1.1 %     +1.3 %    +0.1 .. +1.6 %   3.37
        3e-4, 10 x 20            +0.210    +3.07    +2.4 %     +3.0 %    +0.2 .. +3.3 %   1.69
        2e-4, 20 x 20            +0.212    +4.09    +4.1 %     +5.1 %    +0.4 .. +5.8 %   2.84
        3e-4, 15 x 20            +0.213    +4.55    +5.1 %     +6.4 %    +0.5 .. +7.3 %   2.01
        2e-4, 30 x 20            +0.230    +6.07    +8.4 %    +10.0 %    +0.9 .. +12.9 %  3.98
        1e-4, 30 x 20            +0.210    +3.11    +2.3 %     +2.9 %    +0.2 .. +3.4 %   3.93

    Rule: (1) the premise holds on *every* tuned task, max per-task change <= 10 % (the report's
    verdict, :mod:`taskspace_utils.comparison.premise`, is on the median; a default has to keep it
    with a margin, on the other sizes and checkpoints too); (2) the largest mean target accuracy
    gain; (3) settings within 0.01 of it tie and the fastest wins. Kept by (1): 1e-4 50 x 16,
    1e-4 20 x 20, 3e-4 10 x 20, 2e-4 20 x 20, 3e-4 15 x 20, 1e-4 30 x 20; the largest gain is
    1e-4 50 x 16's (+0.225; next +0.213), with the largest margin gain too (+5.12; next +4.55):
    **1e-4, 50 x 16**, notebook 03's former default, now also the probe's
    (:data:`taskspace_utils.probing.PROBING_FTGD` is ``FTGDConfig()``): the old probing gain at
    about a tenth of its damage, for twice its tuning time. The rule first written, on the median
    alone (median <= 10 %, largest gain, ties within 0.01 to the faster), picked 3e-4 20 x 20 on the
    first 300 sentences of the split (one book: median +7.9 % there) and, on the evenly spaced ones,
    2e-4 30 x 20 at a median of +9.96 %: a default on the threshold on ``tiny-m`` leaves no margin
    for the other units, hence (1). On the other tasks the mean accuracy change is +0.000 (old
    probing setting: -0.024).

    The other fields' defaults (and the first choice of lr 1e-4, 50 x 16) were measured one setting
    at a time (``benchmarks/bench_ftgd.py --sweep``) around lr 1e-4, 50 x 16 on ``tiny-s`` (2.9M
    parameters; 5 tasks, the four above and passive_1; the first 500 held-out sentences); numbers
    there are means over the 5 tasks: target accuracy gain (points) / relative validation
    perplexity change.

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
        lr: learning rate. Default 1e-4 (Adam; table above). The ``tiny-s`` sweep at 50 x 16:
            3e-5 +13.6 / +0.3%, 1e-4 +21.6 / +4.0%, 3e-4 +25.4 / +26%, 1e-3 +27.8 / +1271%
            (perplexity x13.7).
        steps: optimiser steps. Default 50 (50 x 16 = 800 pair presentations = 8 epochs of 100
            pairs; table above). The ``tiny-s`` sweep: 25 steps +16.2 / +1.0%, 50 +21.6 / +4.0%,
            100 +23.0 / +13%.
        batch_size: pairs per step, drawn without replacement from seeded permutations of the
            training pairs (a new permutation every epoch). Default 16 (table above); on
            ``tiny-s`` batch 32 gave the same gain (+21.6 / +4.3%) at twice the time.
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

