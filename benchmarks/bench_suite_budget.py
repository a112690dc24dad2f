"""Benchmark: the suite's build budget, the Pythia-design suite against the earlier one, in one run.

Issue 16 asks that the whole suite (3 sizes + 2 extra seeds of ``tiny-s``, 1,000 equal steps each)
builds in at most 1.3x the time of the earlier suite (800 / 1,000 / 1,500 steps of ``tiny-s`` /
``tiny-m`` / ``tiny-l``), measured on the same machine. A full build of each takes 25-35 minutes
and a shared machine's load changes within that time, so this script measures what both budgets are
made of in one process, back to back: the seconds of one optimizer step of every size (the kit's own
model, optimizer and step: :func:`taskspace_utils.suite.training.model_config`,
:func:`~taskspace_utils.suite.training.make_optimizer` and
:func:`~taskspace_utils.suite.training.train_step`, a batch of ``batch_size x seq_len`` tokens of
the real corpus stream), median over ``--steps`` steps after ``--warmup``, the sizes interleaved
round by round so that a change of load hits all of them alike. Then

    old = 800 t_s + 1000 t_m + 1500 t_l        new = 3 x 1000 t_s + 1000 t_m + 1000 t_l

and the ratio ``new / old``. Checkpoints and validation (a few % of a build) are left out of both.

    python benchmarks/bench_suite_budget.py [--steps 30] [--warmup 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

OLD_STEPS = {"tiny-s": 800, "tiny-m": 1000, "tiny-l": 1500}


def main(argv=None) -> int:
    from transformers import GPTNeoXForCausalLM

    from taskspace_utils import suite
    from taskspace_utils.suite.data import batch_indices, cut_rows, prepare_data
    from taskspace_utils.suite.training import make_optimizer, model_config, train_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suite-dir", default=None, help="where the tokenised corpus is (default: the suite root)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = suite.records.resolve_suite_dir(args.suite_dir)
    root.mkdir(parents=True, exist_ok=True)

    runs = {}
    for size in suite.SUITE_SIZES:
        config = suite.default_config(size)
        tokenizer, _, streams = prepare_data(config, root)
        rows = cut_rows(streams["train"], config.seq_len)
        torch.manual_seed(config.seed)
        model = GPTNeoXForCausalLM(model_config(config, tokenizer))
        runs[size] = (config, model, make_optimizer(model, config), rows)
    times = {size: [] for size in runs}
    for step in range(args.warmup + args.steps):  # interleaved: one step of every size per round
        for size, (config, model, optimizer, rows) in runs.items():
            batch = rows[batch_indices(step, config, rows.shape[0])]
            start = time.perf_counter()
            train_step(model, optimizer, batch, config)
            if step >= args.warmup:
                times[size].append(time.perf_counter() - start)
    per_step = {size: statistics.median(values) for size, values in times.items()}
    new_steps = suite.config.CPU_STEPS
    old = sum(OLD_STEPS[s] * per_step[s] for s in per_step)
    new = sum(new_steps[s] * per_step[s] for s in per_step) + sum(
        new_steps[suite.config.split_name(s)[0]] * per_step[suite.config.split_name(s)[0]] for s in suite.SUITE_SEEDS)
    load = os.getloadavg()[0]
    print(f"threads {args.threads}, load average {load:.2f} on {os.cpu_count()} cores; median of {args.steps} steps")
    for size, seconds in per_step.items():
        print(f"  {size}: {seconds:.3f} s per step")
    print(f"earlier suite (800/1000/1500 steps): {old / 60:.1f} min; Pythia-design suite (3 sizes + "
          f"{len(suite.SUITE_SEEDS)} seeds x {suite.SUITE_STEPS} steps): {new / 60:.1f} min; ratio {new / old:.2f} "
          f"(target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
