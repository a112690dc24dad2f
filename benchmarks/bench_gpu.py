"""Benchmark the kit on a GPU: scoring, the 67 task differentials and the 67 x 67 transfer space of a
Pythia-160m-shaped model, in float32 and bfloat16, each against its FLOP floor.

Run unattended, fully offline, on one H100/H200-class GPU (budget: 8 minutes):

    python benchmarks/bench_gpu.py --out runs/bench_gpu

It writes ``bench_gpu.json`` and ``bench_gpu.md`` (the table) into ``--out`` after every stage (a
run cut short keeps what it measured) and prints the table; bfloat16 runs first. Not yet run on a
GPU (written on a CPU-only machine; the CPU mode below is tested). Estimate from FLOPs at H100
rates: scoring and differentials well under a minute per dtype; the transfer space is bounded by
its 68 evaluations (~2e15 FLOP). The top-k selection of each task's subnetwork mask runs on the
device (``torch.topk``, :func:`taskspace_utils.gradients.subnetworks.kth_largest_on_device`): on
the host it would cost ~1.5 s a task for 160M entries.

The 160m shape's code path has run on a CPU (2 cores, 2026-11-30; ``--device cpu --shape 160m
--tasks 3 --score-pairs 10 --tuned 1 --n-train 20 --n-test 20``: 98 s in all, the 50,304-token BPE
trained in 3.6 s, every stage finite in both dtypes, peak resident set 4.7 GiB).
If the budget is tight, run the stages separately (``--stages scoring``, ``--stages
differentials``, ``--stages transfer``; ``--dtypes bfloat16``), or ``--quick`` (scoring on 20
pairs per task, the transfer space from 8 tuned tasks, extrapolated as in ``bench_probing.py``, their
tuning scaled to the mean task's FLOPs).
The CPU smoke mode that the tests run: ``--device cpu --shape tiny --tasks 3``.

What it builds. A byte-level BPE tokenizer trained on the bundled corpus
(:func:`taskspace_utils.suite.corpus.train_tokenizer`, vocabulary 50,304 as Pythia's; cached in
``--out``) and a randomly initialised GPT-NeoX of Pythia-160m's shape (hidden 768, 12 layers, 12
heads, MLP 3,072, rotary 25 %, parallel residual, untied embeddings, vocabulary 50,304; random
weights cost the same as trained ones). ``--shape tiny``: hidden 64, 2 layers, 4 heads, a
400-token BPE from 2,000 corpus paragraphs.

What it measures, per dtype (the model loaded in that dtype; log-probabilities, sums and FTGD's
optimiser state in float32, :mod:`taskspace_utils.models`):

- ``scoring``: :func:`~taskspace_utils.scoring.sentence_logprobs` over all BLiMP sentences of the
  tasks (``--score-pairs`` per task for a subset), sentences per second;
- ``differentials``: :func:`~taskspace_utils.gradients.task_differential` of every task's 100
  training pairs (each result reduced to its norm and dropped: the 67 vectors are not kept);
- ``transfer``: :func:`~taskspace_utils.probing.probe_transfer` with the default
  :class:`~taskspace_utils.probing.ProbingConfig` (100 train / 100 test pairs, FTGD 20 steps x 20
  pairs, k = 1 %, its differentials computed in the probe), end to end.

FLOPs use ``bench_probing.py``'s formula (Kaplan et al. 2020: forward ``2 N`` per token fed for the
body's matmul parameters, ``2 V d`` per position scored by the LM head, ``4 d`` per (query, key)
pair per layer; backward twice the forward). The floor is FLOPs / the matmul rate measured in the
same run with ``torch.matmul`` in that dtype at the model's MLP shape ``[8192, d] x [d, 4d]``
(float32: TF32 off, as the kit leaves it). Reported per stage and dtype: seconds, throughput,
TFLOP, floor seconds, ratio to the floor, and peak memory (``torch.cuda.max_memory_allocated``
on CUDA; the process's peak resident set on the CPU).

    python benchmarks/bench_gpu.py [--device cuda] [--shape 160m|tiny] [--tasks 67] [--dtypes float32,bfloat16]
        [--stages scoring,differentials,transfer] [--quick] [--tuned N] [--score-pairs N] [--batch-tokens N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_probing import forward_flops, sample_flop_scales, shapes, tuning_counts

STAGES = ("scoring", "differentials", "transfer")
SHAPES = {
    "160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, vocab_size=50304),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=400),
}


def build_tokenizer(shape: str, out: Path):
    """Byte-level BPE on the bundled corpus (all of it for ``160m``; 2,000 paragraphs for ``tiny``),
    cached in ``out/tokenizer-<shape>``."""
    from transformers import PreTrainedTokenizerFast

    from taskspace_utils.suite.corpus import read_corpus, train_tokenizer

    folder = out / f"tokenizer-{shape}"
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(folder)), 0.0
    started = time.perf_counter()
    texts = read_corpus("train")
    tok = train_tokenizer(texts if shape == "160m" else texts[:2000], SHAPES[shape]["vocab_size"])
    seconds = time.perf_counter() - started
    tmp = folder.with_name(folder.name + ".tmp")
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return tok, seconds


def build_model(shape: str, tokenizer, device, dtype):
    """A random GPT-NeoX of ``shape`` (seed 0) on ``device`` in ``dtype``, eval mode."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    s = SHAPES[shape]
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=max(s["vocab_size"], len(tokenizer)), hidden_size=s["hidden_size"],
        num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
        intermediate_size=4 * s["hidden_size"], max_position_embeddings=2048, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):  # initialised where it runs (160M parameters: seconds on a CPU)
        model = GPTNeoXForCausalLM(config)
    return model.to(dtype=dtype).eval()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(device, dtype, m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """FLOP/s of ``torch.matmul`` of ``[m, k] x [k, n]`` in ``dtype`` on ``device`` (best of 5 timings
    of a loop of about ``seconds / 5``)."""
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
    torch.matmul(a, b)
    sync(device)
    started = time.perf_counter()
    torch.matmul(a, b)
    sync(device)
    inner = max(1, int(seconds / 5 / max(time.perf_counter() - started, 1e-6)))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2.0 * m * k * n / best


class Peak:
    """Peak memory of a block: CUDA ``max_memory_allocated`` (reset at entry), or the process's
    peak resident set on the CPU (a high-water mark of the whole process)."""

    def __init__(self, device):
        self.device, self.gib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            self.gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def scoring_counts(tokenizer, sentences, batch_tokens: int) -> dict:
    """Tokens fed, positions scored and attention (query, key) pairs of ``sentence_logprobs``'
    prefix-tree packing of the unique ``sentences`` (the same batches it builds)."""
    from taskspace_utils.prefix_tree import (
        DEFAULT_TREE_ROW_TOKENS,
        build_prefix_tree_rows,
        iter_prefix_tree_batches,
    )
    from taskspace_utils.scoring import tokenize_sentences

    ids = tokenize_sentences(tokenizer, sorted(set(sentences)))
    tree = build_prefix_tree_rows(ids, DEFAULT_TREE_ROW_TOKENS)
    tokens = sum(1 + len(t) for t in tree["tokens"])
    attn = 0
    for rows, _ in iter_prefix_tree_batches(tree, batch_tokens):
        width = max(1 + len(tree["tokens"][r]) for r in rows)
        attn += len(rows) * width ** 2
    return {"tokens": tokens, "head": tokens - len(tree["tokens"]), "attn": attn, "sentences": len(ids)}


def run_stage(stage, model, tok, pairs, args, device, s) -> dict:
    """One stage on one model: seconds, work done, FLOPs (module docstring)."""
    from taskspace_utils.gradients import task_differential
    from taskspace_utils.probing import (
        ProbingConfig,
        prepare_evaluation,
        probe_transfer,
    )
    from taskspace_utils.scoring import sentence_logprobs

    tasks = sorted(pairs.task.unique())
    train, test = pairs[pairs.split == "train"], pairs[pairs.split == "test"]
    if stage == "scoring":
        frame = args.blimp if args.score_pairs is None else args.blimp.groupby("task").head(args.score_pairs)
        sentences = list(frame.good) + list(frame.bad)
        sentence_logprobs(model, tok, sentences[:64], batch_tokens=args.batch_tokens, progress=False)  # warm-up
        sync(device)
        started = time.perf_counter()
        scores = sentence_logprobs(model, tok, sentences, batch_tokens=args.batch_tokens, progress=False)
        sync(device)
        seconds = time.perf_counter() - started
        c = scoring_counts(tok, sentences, args.batch_tokens)
        return {"seconds": seconds, "items": len(sentences), "unit": "sentences/s", "finite": bool(np.isfinite(scores).all()),
                "flops": forward_flops(s, c["tokens"], c["head"], c["attn"]), "counts": c}
    config = ProbingConfig(n_train=args.n_train, n_test=args.n_test, batch_tokens=args.batch_tokens)
    counts = tuning_counts(tok, train, config.ftgd)
    f_diff = 3 * forward_flops(s, counts["differential"]["tokens"], counts["differential"]["head"],
                               counts["differential"]["attn"])  # all tasks' training pairs together
    if stage == "differentials":
        started, norms = time.perf_counter(), []
        for task in tasks:
            d = task_differential(model, tok, train[train.task == task], batch_tokens=args.batch_tokens)
            norms.append(float(torch.sqrt(sum(v.double().pow(2).sum() for v in d.values()))))  # syncs; d dropped
            del d
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "items": len(tasks), "unit": "tasks/s", "finite": bool(np.isfinite(norms).all()),
                "flops": f_diff}
    tuned = tasks if args.tuned is None else tasks[: args.tuned]
    prepared = prepare_evaluation(tok, test, tasks, args.batch_tokens)
    tree = prepared.uses_tree(model)
    eval_batches = prepared.tree_batches if tree else prepared.batches
    attn = sum(int(b["input_ids"].shape[1]) ** 2 * int(b["input_ids"].shape[0]) for _, b in eval_batches)
    f_eval = forward_flops(s, prepared.n_tree_tokens if tree else prepared.n_tokens,
                           prepared.n_tree_scored if tree else prepared.n_scored, attn)
    f_tune = 3 * forward_flops(s, counts["tune"]["tokens"], counts["tune"]["head"], counts["tune"]["attn"])
    n = len(tasks)
    folder = args.out / "probe_tmp"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    result = probe_transfer(model, tok, pairs[pairs.task.isin(tuned) | (pairs.split == "test")], folder,
                            config.replace(tasks=tuple(tuned), eval_tasks=tuple(tasks)), progress=args.progress)
    sync(device)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    scale = 1.0
    if len(tuned) < n:  # eval1 + n x (tune + eval2), from the tuned tasks measured, their tuning (and
        # its differential) scaled to the mean task's FLOPs (bench_probing.sample_flop_scales)
        scale = sample_flop_scales(tok, s, train, train[train.task.isin(tuned)], config.ftgd)["tune"]
        per_task = (scale * result.timings["tune_seconds"] + result.timings["eval_seconds"]).mean()
        seconds = seconds + (n - len(tuned)) * per_task
    return {"seconds": seconds, "items": n * n, "unit": "entries/s", "extrapolated_from_tuned": len(tuned),
            "tune_flop_scale": scale,
            "finite": bool(np.isfinite(result.margin.to_numpy()).all()),
            "flops": f_eval * (n + 1) + n * (f_tune + f_diff / n)}


def table(rows: list[dict]) -> str:
    head = ("| stage | dtype | seconds | throughput | TFLOP | matmul GFLOP/s | floor s | ratio | peak GiB |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['stage']} | {r['dtype']} | {r['seconds']:.2f} | {r['items'] / r['seconds']:,.1f} {r['unit']} | "
             f"{r['flops'] / 1e12:.3f} | {r['matmul_flops'] / 1e9:,.0f} | {r['floor_seconds']:.3f} | "
             f"{r['ratio_to_floor']:.1f} | {r['peak_gib']:.2f} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="160m")
    parser.add_argument("--tasks", type=int, default=67, help="the first N BLiMP tasks (sorted)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="bf16 first: the target's numbers come first")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--quick", action="store_true", help="scoring on 20 pairs per task, transfer from 8 tuned tasks")
    parser.add_argument("--tuned", type=int, default=None, help="tune only the first N tasks; extrapolate the space")
    parser.add_argument("--score-pairs", type=int, default=None, help="pairs per task scored (default: all 1,000)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="positions per batch (default 16,384 on CUDA, "
                        "the kit's 1,024 on the CPU)")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="tqdm bar over the tuned tasks")
    parser.add_argument("--out", default="runs/bench_gpu")
    args = parser.parse_args(argv)
    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.models import resolve_dtype

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible (torch.cuda.is_available() is False); use --device cpu")
    stages = [x for x in args.stages.split(",") if x]
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown {unknown}; use {','.join(STAGES)}")
    dtypes = [resolve_dtype(x) for x in args.dtypes.split(",") if x]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.score_pairs = args.score_pairs or 20
        args.tuned = args.tuned or 8
    args.batch_tokens = args.batch_tokens or (16384 if device.type == "cuda" else 1024)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    tok, tok_seconds = build_tokenizer(args.shape, args.out)
    blimp = load_blimp()
    names = sorted(blimp.task.unique())[: args.tasks]
    args.blimp = blimp[blimp.task.isin(names)]
    pairs = split_pairs(args.blimp, args.n_train, args.n_test, seed=0)
    rows = []
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__, "shape": args.shape, "vocab": len(tok), "tokenizer_train_s": tok_seconds,
            "tasks": len(names), "batch_tokens": args.batch_tokens, "tf32": torch.backends.cuda.matmul.allow_tf32,
            "loadavg_start": os.getloadavg(), "argv": sys.argv[1:] if argv is None else list(argv)}
    for dtype in dtypes:
        model = build_model(args.shape, tok, device, dtype)
        s = shapes(model)
        d = s["d"]
        rate = gemm_rate(device, dtype, 8192 if device.type == "cuda" else 1024, d, 4 * d)
        name = str(dtype).replace("torch.", "")
        for stage in stages:
            with Peak(device) as peak:
                got = run_stage(stage, model, tok, pairs, args, device, s)
            row = {"stage": stage, "dtype": name, **got, "matmul_flops": rate, "floor_seconds": got["flops"] / rate,
                   "peak_gib": peak.gib, "params": s["params"]}
            row["ratio_to_floor"] = row["seconds"] / row["floor_seconds"]
            rows.append(row)
            _write(args.out, info, rows, tok, names, args)  # after every row: a run cut short keeps what it measured
            print(f"{stage:13s} {name:9s} {row['seconds']:8.2f} s  {row['items'] / row['seconds']:10.1f} {row['unit']}  "
                  f"floor {row['floor_seconds']:.3f} s  ratio {row['ratio_to_floor']:.1f}  peak {row['peak_gib']:.2f} GiB",
                  flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out, markdown = _write(args.out, info, rows, tok, names, args)
    print("\n" + markdown)
    return out


def _write(folder: Path, info: dict, rows: list[dict], tok, names, args) -> tuple[dict, str]:
    """``bench_gpu.json`` (info and rows) and ``bench_gpu.md`` (the table), written atomically."""
    from taskspace_utils.results import atomic_write_json, atomic_write_text

    info = info | {"loadavg_end": os.getloadavg()}
    out = {"info": info, "rows": rows}
    markdown = (f"Bench GPU: {args.shape}-shaped GPT-NeoX ({rows[0]['params'] / 1e6:.1f}M parameters, vocabulary "
                f"{len(tok):,}) on {info['device']}, {len(names)} tasks, batches of {args.batch_tokens:,} positions"
                + (" (quick)" if args.quick else "") + "\n\n" + table(rows) + "\n") if rows else "no stage run\n"
    atomic_write_json(folder / "bench_gpu.json", out)
    atomic_write_text(folder / "bench_gpu.md", markdown)
    return out, markdown


if __name__ == "__main__":
    main()
