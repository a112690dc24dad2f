"""The offline model suite (stage 00): three GPT-NeoX sizes and two extra seeds, pre-trained with checkpoints on the bundled corpus.

The paper (Weber et al., 2024) compares the authors' own models of three sizes (about 27M, 70M and
203M parameters) and their checkpoints along pre-training; those models are not public. Offline,
the kit builds its own small suite in Pythia's design: sizes ``tiny-s``, ``tiny-m``, ``tiny-l``
(``transformers``' GPT-NeoX, the Pythia architecture) that read the same token stream in the same
order for the same number of steps, saved at the same log-spaced early steps and evenly spaced
later ones, plus extra pre-training seeds of the smallest size (``tiny-s-seed1``, ``tiny-s-seed2``:
another initialisation and data order, as in PolyPythias) that give the noise floor; trained on the
bundled corpus (:mod:`.corpus`) with a byte-level BPE tokenizer. ``models.load_model("tiny-m")`` loads the final
checkpoint, ``load_model("tiny-m@step64")`` an earlier one, ``@step0`` the initialisation,
``load_model("tiny-s-seed1@step500")`` a checkpoint of another seed.

Modules, one job each
---------------------
- :mod:`.config`: :class:`PretrainConfig`, the default shapes and budgets, saved steps, learning rate.
- :mod:`.corpus`: building and reading the bundled corpus (``data/corpus/``); the BPE tokenizer.
- :mod:`.data`: tokenised corpus streams, rows of ``seq_len`` tokens, the seeded batch order.
- :mod:`.training`: the model, optimizer, validation loss and training loop (:func:`train_size`,
  :func:`build_suite`).
- :mod:`.records`: the suite on disk (layout, checkpoints, resume state, :func:`is_built`),
  :func:`checkpoint_table` and BLiMP per checkpoint (:func:`evaluate_checkpoints`).

CLI: ``python -m taskspace_utils.suite --size tiny-m [--suite-dir DIR] [--smoke] [--threads 1]``.
"""

from ..models import count_parameters
from . import config, corpus, data, records, training
from .config import (
           SUITE_MODELS,
           SUITE_SEEDS,
           SUITE_SIZES,
           SUITE_STEPS,
           PretrainConfig,
           checkpoint_steps,
           default_config,
           learning_rate,
)
from .corpus import CORPUS_DIR, EOT_TOKEN, read_corpus, split_sentences
from .data import prepare_data
from .records import checkpoint_table, evaluate_checkpoints, is_built, suite_table, token_design_problems
from .training import build_suite, train_size, validation_loss

__all__ = ["SUITE_SIZES", "SUITE_SEEDS", "SUITE_MODELS", "SUITE_STEPS", "suite_table", "token_design_problems", "PretrainConfig", "default_config", "checkpoint_steps", "learning_rate", "count_parameters",
           "build_suite", "train_size", "is_built", "checkpoint_table", "evaluate_checkpoints", "validation_loss",
           "prepare_data", "CORPUS_DIR", "EOT_TOKEN", "read_corpus", "split_sentences"]
