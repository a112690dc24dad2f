"""taskspace: interpreting language models through linguistic task spaces (Weber et al., ACL 2024).

The workflow, in the paper's order (each name is importable from here)::

    from taskspace_utils import (load_blimp, split_pairs, load_model, encode, score_pairs,
                                 extract_task_differentials, tune_task, compare_controls,
                                 probe_transfer, alignment_table, compare_units)

    pairs = split_pairs(load_blimp(tasks=None), n_train=100, n_test=100, seed=0)   # 1. data
    model, tokenizer = load_model("tiny-m")                                       #    a model
    encoded = encode(tokenizer, pairs)                                            #    tokenised once
    scored = score_pairs(model, tokenizer, encoded)                               # 2. scores
    extract_task_differentials(model, tokenizer, encoded.pairs, out / "gradients_sentence",
                               GradientConfig(model="tiny-m"))                    # 3. differentials
    tune_task(model, tokenizer, train_pairs, FTGDConfig(), differential)          # 4. FTGD
    result = probe_transfer(model, tokenizer, pairs, out, ProbingConfig())        # 5. task space
    alignment_table({"transfer_margin": result.margin}, hypothesis_spaces(meta))   #    vs. hypotheses
    compare_units(run_dir)                                                        # 6. sizes, steps

Names are loaded lazily (PEP 562 ``__getattr__``), so ``import taskspace_utils`` stays cheap for the
batch runner and the package's modules can be imported on their own. The modules themselves:
:mod:`.data`, :mod:`.models`, :mod:`.encoding`, :mod:`.scoring` (with :mod:`.batching`, :mod:`.padded`,
:mod:`.prefix_tree`, :mod:`.lm_head`), :mod:`.gradients`, :mod:`.ftgd`, :mod:`.probing`,
:mod:`.spaces`, :mod:`.comparison`, :mod:`.plotting`, :mod:`.widgets`, :mod:`.pipeline`,
:mod:`.suite`, :mod:`.task_data`, :mod:`.results`, :mod:`.layout`.
"""

from __future__ import annotations

import importlib

#: name -> module that defines it, in the order of the workflow.
_EXPORTS = {
    # 1. data: BLiMP or your own minimal pairs, seeded splits
    "load_blimp": "data", "load_pairs": "data", "split_pairs": "data", "task_metadata": "data",
    "save_task_data": "data", "load_task_data": "data", "DataConfig": "data", "PairsError": "data",
    # a model by spec (offline suite, local folder, hub name@revision)
    "load_model": "models", "describe_model": "models", "count_parameters": "models",
    # pairs encoded once under a tokenizer
    "encode": "encoding", "EncodedPairs": "encoding",
    # 2. scoring
    "score_pairs": "scoring", "sentence_logprobs": "scoring", "blimp_accuracy": "scoring",
    # 3. gradient differentials and the gradient space
    "GradientConfig": "gradients", "task_differential": "gradients",
    "extract_task_differentials": "gradients", "load_gradient_spaces": "gradients",
    "subnetwork_masks": "gradients", "gradient_space": "gradients", "mask_overlap_space": "gradients",
    # 4. FTGD and its controls
    "FTGDConfig": "ftgd", "tune_task": "ftgd", "compare_controls": "ftgd", "perplexity": "ftgd",
    "evaluate_model": "ftgd",
    # 5. similarity probing: the transfer space
    "ProbingConfig": "probing", "probe_transfer": "probing", "load_transfer": "probing",
    "first_order_prediction": "probing",
    # comparing spaces with hypotheses and lexical controls
    "hypothesis_spaces": "spaces", "lexical_spaces": "spaces", "compare_spaces": "spaces",
    "alignment_table": "spaces", "difference_with_uncertainty": "spaces", "generalisation_index": "spaces",
    # 6. across model sizes and checkpoints
    "ComparisonConfig": "comparison", "compare_units": "comparison",
    # the offline suite
    "build_suite": "suite",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskspace_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
