"""Benchmark: taskspace sentence scoring vs. minicons on the same model and sentences.

Compares `taskspace_utils.scoring.sentence_logprobs` with minicons'
`IncrementalLMScorer.sequence_score(..., bos_token=True, reduction=sum)` (the same convention), checks
that the per-sentence log-probs agree (<= 1e-4 absolute; checked on a float64 copy of the model so that
the check measures the convention, not float32 summation order, whose effect is reported too), and
reports sentences/second of both (float32) and their ratio; our padded packing (``packing="padded"``) is
timed in the same loop, so the gain of prefix-tree packing is measured too, and checked against it
(<= 1e-9 absolute in float64, where only the order of additions differs; the float32 difference is
reported). Runs are interleaved (ours, theirs, ours, ...) and the median of `--repeats` is kept, so a
busy machine slows both alike.

Model: `--model SPEC` (e.g. `tiny-m` once the offline suite is built) or, by default, a randomly
initialised GPT-NeoX of the issue's reference size (d128, 4 layers, vocabulary 8,192; ~2.9M parameters)
with a BPE tokenizer trained on BLiMP sentences. Weights do not change the cost.

    python benchmarks/bench_scoring.py [--model tiny-m] [--n 4000] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def reference_model():
    from conftest import build_tiny_tokenizer
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = build_tiny_tokenizer(vocab_size=8192)
    config = GPTNeoXConfig(vocab_size=8192, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=512, max_position_embeddings=256, rotary_pct=0.25,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval(), tok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=4000, help="number of BLiMP sentences")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minicons-batch", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from minicons import scorer
    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.models import count_parameters, load_model
    from taskspace_utils.scoring import sentence_logprobs, supports_prefix_tree

    model, tok = (load_model(args.model, device="cpu") if args.model else reference_model())
    pairs = split_pairs(load_blimp(), n_train=max(1, args.n // (2 * 67)), n_test=0, seed=0)
    sentences = (list(pairs.good) + list(pairs.bad))[: args.n]
    mc = scorer.IncrementalLMScorer(model, device="cpu", tokenizer=tok)

    def ours(packing="auto"):
        return sentence_logprobs(model, tok, sentences, progress=False, packing=packing)

    def theirs(bs):
        out = []
        with torch.inference_mode():
            for i in range(0, len(sentences), bs):
                out += mc.sequence_score(sentences[i:i + bs], reduction=lambda x: x.sum(0).item(), bos_token=True)
        return np.array(out)

    ours(); ours("padded"); [theirs(bs) for bs in args.minicons_batch]  # warm-up
    t_ours, t_padded, t_theirs = [], [], {bs: [] for bs in args.minicons_batch}
    for _ in range(args.repeats):
        t = time.perf_counter(); a = ours(); t_ours.append(time.perf_counter() - t)
        t = time.perf_counter(); a_padded = ours("padded"); t_padded.append(time.perf_counter() - t)
        for bs in args.minicons_batch:
            t = time.perf_counter(); b = theirs(bs); t_theirs[bs].append(time.perf_counter() - t)
    max_diff_fp32 = float(np.abs(a - b).max())
    model64 = copy.deepcopy(model).double()
    mc64 = scorer.IncrementalLMScorer(model64, device="cpu", tokenizer=tok)
    check = sentences[: min(len(sentences), 1000)]
    ours64 = sentence_logprobs(model64, tok, check, progress=False)
    padded64 = sentence_logprobs(model64, tok, check, progress=False, packing="padded")
    theirs64 = np.array(mc64.sequence_score(check, reduction=lambda x: x.sum(0).item(), bos_token=True))
    max_diff = float(np.abs(ours64 - theirs64).max())
    tree_vs_padded64 = float(np.abs(ours64 - padded64).max())
    best_bs = min(t_theirs, key=lambda bs: statistics.median(t_theirs[bs]))
    result = {
        "model": args.model or "random GPT-NeoX d128 L4 V8192", "parameters": count_parameters(model),
        "sentences": len(sentences), "threads": args.threads,
        "ours_packing": "tree" if supports_prefix_tree(model) else "padded",
        "ours_sentences_per_s": len(sentences) / statistics.median(t_ours),
        "ours_padded_sentences_per_s": len(sentences) / statistics.median(t_padded),
        "tree_vs_padded": statistics.median(t_padded) / statistics.median(t_ours),
        "max_abs_tree_vs_padded_float64": tree_vs_padded64,
        "max_abs_tree_vs_padded_float32": float(np.abs(a - a_padded).max()),
        "minicons_sentences_per_s": {bs: len(sentences) / statistics.median(v) for bs, v in t_theirs.items()},
        "minicons_best_batch": best_bs,
        "ratio_vs_best_minicons": statistics.median(t_theirs[best_bs]) / statistics.median(t_ours),
        "max_abs_logprob_diff_float64": max_diff,
        "max_abs_logprob_diff_float32": max_diff_fp32,
    }
    print(json.dumps(result, indent=2))
    assert max_diff <= 1e-4, f"scores disagree with minicons by {max_diff}"
    # both packings compute the same sums in float64; only the order of additions differs
    assert tree_vs_padded64 <= 1e-9, f"prefix-tree and padded packings disagree by {tree_vs_padded64}"
    return result


if __name__ == "__main__":
    main()
