"""FTGD: fine-tuning via gradient differentials (Weber et al. 2024, Section 4), and the controls
that show why it is needed.

FTGD tunes only a task's subnetwork, the top-k parameters by ``|d_T|`` (d_T: the task differential,
mean over training pairs of grad [log p(good) - log p(bad)]), so that the model prefers the
grammatical member of each pair; the tuned model is kept as a bitwise-exact sparse change of the
base model, so tuning 67 tasks never copies the model.

Modules
-------
- :mod:`.config`: :class:`FTGDConfig` (every setting, its default and the measurement behind it;
  the objectives), :data:`CONTROLS`, :class:`FTGDDivergedError`.
- :mod:`.delta`: :class:`SparseDelta`, :func:`applied` (apply / revert / save / load a tuned
  model); :func:`delta_by_module`: where (embeddings, which layer's attention or MLP) it changed.
- :mod:`.tuning`: :func:`tune_task`: tune one task in place, return its delta, restore the model.
- :mod:`.validation`: :func:`perplexity` (held-out text, BOS-prefix convention of :mod:`.scoring`),
  :func:`validation_texts` (the corpus's held-out sentences), :func:`prepare_texts`
  (:class:`PreparedTexts`: tokenised and collated once, scored for the base and every tuned model).
- :mod:`.controls`: :func:`evaluate_model`, :func:`evaluate_control`, :func:`compare_controls`: the controls table
  (``ftgd``, ``all_params``, ``random_mask``, ``lm_good``).
"""

from .config import CONTROLS, FTGDConfig, FTGDDivergedError
from .controls import (
    ROW_COLUMNS,
    compare_controls,
    evaluate_control,
    evaluate_model,
    perplexity,
)
from .delta import SparseDelta, applied, delta_by_module
from .tuning import tune_task
from .validation import PreparedTexts, model_max_tokens, prepare_texts, validation_texts

__all__ = [
    "CONTROLS",
    "ROW_COLUMNS",
    "FTGDConfig",
    "FTGDDivergedError",
    "SparseDelta",
    "applied",
    "delta_by_module",
    "tune_task",
    "perplexity",
    "PreparedTexts",
    "prepare_texts",
    "model_max_tokens",
    "validation_texts",
    "evaluate_model",
    "evaluate_control",
    "compare_controls",
]
