"""The GPU benchmark's code path on the CPU (``benchmarks/bench_gpu.py --device cpu --shape tiny
--tasks 3``, smaller pair counts): every stage in float32 and bfloat16, the table written, the FLOP
counts equal to ``bench_probing.py``'s formula recomputed here, and every ratio at or above 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_bench_gpu_cpu_mode(tmp_path):
    import bench_gpu
    from bench_probing import forward_flops

    out = bench_gpu.main(["--device", "cpu", "--shape", "tiny", "--tasks", "3", "--score-pairs", "40",
                          "--n-train", "20", "--n-test", "20", "--dtypes", "float32,bfloat16", "--threads", "1", "--out", str(tmp_path)])
    rows = out["rows"]
    assert [(r["stage"], r["dtype"]) for r in rows] == [
        (stage, dtype) for dtype in ("float32", "bfloat16") for stage in bench_gpu.STAGES]
    for r in rows:
        assert r["finite"] and r["seconds"] > 0 and r["flops"] > 0 and r["peak_gib"] > 0
        assert np.isclose(r["floor_seconds"], r["flops"] / r["matmul_flops"])
        assert r["ratio_to_floor"] > 1  # nothing runs faster than its own matmul rate allows
    by = {(r["stage"], r["dtype"]): r for r in rows}
    assert by["scoring", "float32"]["items"] == 3 * 40 * 2 and by["transfer", "float32"]["items"] == 9
    # the same work in both dtypes (the FLOP count does not depend on the dtype)
    for stage in bench_gpu.STAGES:
        assert by[stage, "float32"]["flops"] == by[stage, "bfloat16"]["flops"]
    # the scoring counts checked independently: every distinct prefix of the distinct sentences'
    # token sequences is fed at least once, no position more often than unpacked rows would feed
    # it, and the FLOPs are bench_probing's formula of those counts
    from transformers import PreTrainedTokenizerFast

    from taskspace_utils.data import load_blimp
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tokenizer-tiny"))
    blimp = load_blimp()
    frame = blimp[blimp.task.isin(sorted(blimp.task.unique())[:3])].groupby("task").head(40)
    ids = [tuple(tok(s, add_special_tokens=False)["input_ids"]) for s in sorted(set(frame.good) | set(frame.bad))]
    prefixes = {x[:k] for x in ids for k in range(1, len(x) + 1)}
    c = by["scoring", "float32"]["counts"]
    assert c["sentences"] == len(ids)
    assert len(prefixes) <= c["head"] <= sum(len(x) for x in ids)
    assert c["head"] < c["tokens"] <= sum(len(x) + 1 for x in ids)
    body = rows[0]["params"] - 2 * 64 * len(tok)  # untied input and output embeddings
    shape = {"d": 64, "layers": 2, "head": 64 * len(tok), "body_matmul": body}
    assert by["scoring", "float32"]["flops"] == forward_flops(shape, c["tokens"], c["head"], c["attn"])
    saved = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert len(saved["rows"]) == 6 and saved["info"]["tasks"] == 3
    table = (tmp_path / "bench_gpu.md").read_text()
    assert table.count("\n| ") == 7 and "bfloat16" in table


def test_sample_flop_scales_are_the_mean_tasks_over_the_samples(tiny_tokenizer):
    """``bench_probing.sample_flop_scales`` against the same ratio built task by task: the mean of the
    tasks' own FLOPs over the mean of the sampled tasks' (pooled there, per task here)."""
    from bench_probing import forward_flops, sample_flop_scales, tuning_counts

    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.ftgd import FTGDConfig

    blimp = load_blimp()
    names = sorted(blimp.task.unique())[:4]
    pairs = split_pairs(blimp[blimp.task.isin(names)], 20, 20, seed=0)
    train = pairs[pairs.split == "train"]
    shape = {"d": 32, "layers": 2, "head": 32 * 400, "body_matmul": 30_000}
    config = FTGDConfig()

    def per_task(kind):
        out = {}
        for task, frame in train.groupby("task"):
            c = tuning_counts(tiny_tokenizer, frame, config)[kind]
            out[task] = 3 * forward_flops(shape, c["tokens"], c["head"], c["attn"])
        return out

    sample = names[:2]
    for kind in ("tune", "differential"):
        flops = per_task(kind)
        want = np.mean([flops[t] for t in names]) / np.mean([flops[t] for t in sample])
        got = sample_flop_scales(tiny_tokenizer, shape, train, train[train.task.isin(sample)], config)[kind]
        assert np.isclose(got, want, rtol=1e-12) and got != 1.0
    assert sample_flop_scales(tiny_tokenizer, shape, train, train, config) == {"tune": 1.0, "differential": 1.0}
