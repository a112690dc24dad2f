"""Speed of the gradient stage (taskspace_utils.gradients) against the usual ways of collecting gradients.

Three measurements, peer and candidate back to back in one process on the same model and pairs
(so a loaded machine slows both alike; report ratios):

1. task mean: ``task_differential`` (one backward per token batch of the summed, signed margins,
   rows packed as prefix trees) vs. a batch-size-1 autograd loop (one forward/backward per sentence,
   the way LESS and TRAK's fallback collect gradients), same scoring code, so only the batching
   differs. Target >= 10x. The batched pass with padded rows instead of prefix trees is timed too.
2. per-pair differentials: ``torch.func`` (vmap over grad) vs. the per-pair loop, per model size;
   ``GradientConfig(per_pair_method="auto")`` uses the winner.
3. all 67 BLiMP tasks x 100 training pairs on the largest suite model: ``extract_task_differentials``
   end to end (task means + split halves, spaces, masks), and with per-pair norms. Target < 2 min.

Models: the offline suite's ``tiny-l`` when it is built, else randomly initialised GPT-NeoX models
of the suite's shapes (vocabulary 8,192; a byte-level BPE trained here on BLiMP), plus a ~20M one:

    tiny-s  d=128, 4 layers: 2.9M     tiny-l  d=256, 5 layers: 8.1M     neox-20m  d=384, 6 layers: 17M

Gradient cost does not depend on the weights' values, so random weights time the same.

Measured 2026-11-25, second session, quiet machine (load average ~0.6), 1 thread, the built suite's
tiny-l, after prefix-tree packing (and log_softmax + gather in place of logsumexp): part 1 speed-up
10.4x / 12.4x / 13.8x (tiny-s, tiny-l, 17M), again 11.2x / 11.6x / 13.8x. The same machine before
the change (padded rows): 7.9x / 7.7x / 8.4x.

Measured 2026-11-25, first session (tiny-l not built yet: random models of the suite's shapes), 1 thread per
process on the 2-core machine shared with other jobs (load average 6-12: the process got about a
third of a core, so wall times are ~3x CPU times; ratios are within one process, back to back):

1. task mean, 100 pairs: batched / loop speed-up 8.4x, 11.1x, 6.9x (tiny-s, tiny-l, 17M; first run)
   and 9.5x, 9.3x, 5.3x (second run); results agree to 6e-7 (float32). With 2 threads per process
   the loop degrades far more than the batched pass (11x and 76x on 30 pairs), which flatters the
   ratio, so the 1-thread numbers are the honest ones. The batched pass runs near one core's matmul
   throughput (~60% of its time in mm/addmm), so the ratio is bounded by how much the loop's small
   matmuls lose, not by overhead left in the batched code.
2. per-pair vectors, 32 pairs, vmap / loop time: 0.64, 1.07, 0.72 (first run); 0.56, 0.68, 1.22
   (second run) -> vmap up to 10M parameters, loop above. Per-pair *norms* by ghost norms cost
   1.4-1.7x the mean alone (vmap vectors: 3-6x).
3. 67 tasks x 100 pairs on tiny-l, everything included (files, spaces, masks): default config
   (ghost norms in float32) 447 s wall / 136 s CPU (float64 ghost Grams: 459 / 151); task means only
   327 s wall / 96 s CPU; full per-pair vectors by vmap 12.7 s CPU per task (~14 min CPU for all).
   Spaces + masks are ~13 s CPU of these. The < 2 min target holds in CPU time (one core) for the
   task means only, and would need the second core for the default config; in wall time it was not
   reachable on the loaded machine.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_gradients.py [--quick] [--skip-full | --only-full]
[--means-only]`` (one thread per process: on a shared 2-core machine torch's OpenMP threads spin and
a batch-size-1 loop slows down ~10x with 2 threads, which would flatter the batched code).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import torch

from taskspace_utils import gradients as G
from taskspace_utils.gradients import differentials
from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.models import ModelNotAvailableError, count_parameters, load_model
from taskspace_utils.scoring import encode_batch, token_logprob_sums

SHAPES = {
    "tiny-s": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4),
    "tiny-l": dict(hidden_size=256, num_hidden_layers=5, num_attention_heads=8),
    "neox-20m": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6),
}


def build_tokenizer(pairs: pd.DataFrame, vocab_size: int = 8192):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(pairs["good"]) + list(pairs["bad"]), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def build_model(shape: dict, vocab_size: int = 8192):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    d = shape["hidden_size"]
    config = GPTNeoXConfig(vocab_size=vocab_size, intermediate_size=4 * d, max_position_embeddings=256,
                           rotary_pct=0.25, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, **shape)
    return GPTNeoXForCausalLM(config).eval()


def loop_mean(model, tokenizer, pairs: pd.DataFrame) -> dict:
    """Peer: batch-size-1 loop, one forward/backward per sentence, gradients accumulated."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in params}
    n = len(pairs)
    for good, bad in zip(pairs["good"], pairs["bad"]):
        for sentence, sign in ((good, 1.0), (bad, -1.0)):
            logp = token_logprob_sums(model, encode_batch(tokenizer, [sentence]))[0]
            for (name, _), g in zip(params, torch.autograd.grad(logp, [p for _, p in params])):
                total[name] += (sign / n) * g
    return total


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` runs (and the last result)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def rel_diff(a: dict, b: dict) -> float:
    scale = max(float(t.abs().max()) for t in b.values())
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


def bench_task_mean(models: dict, pairs: pd.DataFrame) -> pd.DataFrame:
    """Part 1: batched task differential vs. the batch-size-1 loop, per model."""
    rows = []
    for size, (model, tok) in models.items():
        t_batched, batched = timed(lambda: G.task_differential(model, tok, pairs), repeat=2)
        tree = differentials.supports_prefix_tree  # where task_differential looks it up
        differentials.supports_prefix_tree = lambda m: False  # the same batched pass with padded rows
        try:
            t_padded, _ = timed(lambda: G.task_differential(model, tok, pairs), repeat=2)
        finally:
            differentials.supports_prefix_tree = tree
        t_loop, looped = timed(lambda: loop_mean(model, tok, pairs))
        rows.append(dict(model=size, params_M=count_parameters(model) / 1e6, batched_s=t_batched, loop_s=t_loop,
                         speedup=t_loop / t_batched, padded_s=t_padded, padded_speedup=t_loop / t_padded,
                         max_rel_diff=rel_diff(batched, looped)))
    return pd.DataFrame(rows)


def bench_per_pair(models: dict, pairs: pd.DataFrame) -> pd.DataFrame:
    """Part 2: per-pair differentials by vmap vs. loop; ghost norms and the mean alone for scale."""
    rows = []
    for size, (model, tok) in models.items():
        def run(method):
            return [c for _, c in G.iter_pair_differentials(model, tok, pairs, method=method, chunk_pairs=8)]

        t_loop, _ = timed(lambda: run("loop"))
        t_vmap, _ = timed(lambda: run("vmap"))
        t_ghost, _ = timed(lambda: G.pair_differential_norms(model, tok, pairs))
        t_mean, _ = timed(lambda: G.task_differential(model, tok, pairs))
        rows.append(dict(model=size, loop_s=t_loop, vmap_s=t_vmap, winner="vmap" if t_vmap < t_loop else "loop",
                         vmap_over_loop=t_vmap / t_loop, ghost_norms_s=t_ghost, mean_only_s=t_mean))
    return pd.DataFrame(rows)


def bench_all_tasks(model, tok, train: pd.DataFrame, means_only: bool, n_vmap_tasks: int) -> None:
    """Part 3: ``extract_task_differentials`` over all tasks (default config; task means only), and
    the full per-pair vectors on a few tasks."""
    configs = [("default config (per-pair norms by ghost norms)", G.GradientConfig(model="tiny-l", n_train=100))]
    if means_only:
        configs.append(("task means only (per_pair=False)", G.GradientConfig(model="tiny-l", n_train=100, per_pair=False)))
    for label, config in configs:
        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            stats = G.extract_task_differentials(model, tok, train, out, config, progress=False)
            total, cpu = time.perf_counter() - start, time.process_time() - cpu
            start = time.perf_counter()
            G.summarise_run(out, config, progress=False)
            summary = time.perf_counter() - start
            print(f"   {label}: {total:.1f} s wall, {cpu:.1f} s CPU (of which spaces + masks {summary:.1f} s wall); "
                  f"{len(stats)} tasks, median split-half cosine {stats['split_half_cosine'].median():.2f}, "
                  f"median consistency {stats['consistency'].median():.2f}", flush=True)
    if not n_vmap_tasks:
        return
    tasks = sorted(train["task"].unique())[:n_vmap_tasks]
    with tempfile.TemporaryDirectory() as out:
        config = G.GradientConfig(model="tiny-l", n_train=100, per_pair_method="vmap")
        start, cpu = time.perf_counter(), time.process_time()
        G.extract_task_differentials(model, tok, train, out, config, tasks=tasks, progress=False)
        per_task, cpu = (time.perf_counter() - start) / len(tasks), (time.process_time() - cpu) / len(tasks)
        print(f"   full per-pair vectors (vmap, as for sketches): {per_task:.1f} s wall ({cpu:.1f} s CPU) per task, "
              f"about {per_task * train['task'].nunique() / 60:.1f} min wall for all tasks")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and sizes (a smoke run)")
    parser.add_argument("--skip-full", action="store_true", help="skip part 3 (all 67 tasks)")
    parser.add_argument("--only-full", action="store_true", help="only part 3")
    parser.add_argument("--means-only", action="store_true", help="part 3 also without per-pair norms")
    parser.add_argument("--vmap-tasks", type=int, default=3, help="part 3: tasks timed with full per-pair vectors")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()}")

    blimp = load_blimp()
    train = split_pairs(blimp, n_train=100, n_test=0, seed=0)
    tokenizer = build_tokenizer(blimp)
    try:
        suite = load_model("tiny-l", device="cpu")
        print("using the built offline suite model tiny-l")
    except ModelNotAvailableError:
        suite = None
        print("offline suite tiny-l not built: random GPT-NeoX models of the suite's shapes")
    sizes = ["tiny-l"] if args.only_full else ["tiny-s", "tiny-l"] if args.quick else ["tiny-s", "tiny-l", "neox-20m"]
    models = {size: suite if size == "tiny-l" and suite is not None else (build_model(SHAPES[size]), tokenizer)
              for size in sizes}

    if not args.only_full:
        n_pairs, n_per = (30, 16) if args.quick else (100, 32)
        pairs = train[train["task"] == "wh_island"].head(n_pairs)
        print(f"\n1. task mean of {n_pairs} pairs (wh_island): batched task_differential vs. batch-size-1 loop")
        print(bench_task_mean(models, pairs).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"\n2. per-pair differentials of {n_per} pairs: torch.func vmap vs. loop (chunks of 8 pairs); "
              "per-pair norms only (ghost norms, one batched pass) and the mean only, for scale")
        print(bench_per_pair(models, pairs.head(n_per)).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if not args.skip_full:
        model, tok = models["tiny-l"]
        print(f"\n3. all {train['task'].nunique()} tasks x 100 training pairs, tiny-l "
              f"({count_parameters(model) / 1e6:.1f}M parameters)")
        bench_all_tasks(model, tok, train, args.means_only, args.vmap_tasks)


if __name__ == "__main__":
    np.random.seed(0)
    main()
