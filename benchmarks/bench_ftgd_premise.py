"""Benchmark FTGD's premise at the probing settings: target gain vs. validation-perplexity damage vs. time.

Trade-off (default mode). On a suite model (``--model``, default ``tiny-m``, final step) and 4 BLiMP
tasks of 4 phenomena (``TASKS``), 100 train / 100 test pairs per task (``split_pairs``, seed 0) and
``--n-val`` (300) sentences evenly spaced over the corpus validation split (``validation_texts``),
every FTGD setting of
``SETTINGS`` (k = 1 %, Adam, margin objective; learning rate, steps x batch varied) tunes each task
with the kit's ``tune_task`` (mask differential given, as the probe gets it from the gradient stage),
exactly as the probe does, and measures per tuned task

    target gain        self-transfer on the task's test pairs: accuracy and mean margin (nats),
                       with the probe's evaluation (``prepare_evaluation``)
    other change       mean accuracy change on the other 3 tasks
    val-ppl change     ppl_tuned / ppl_base - 1 on the validation sentences (``perplexity`` of
                       ``prepare_texts``: tokenised once), also on the probe's default
                       ``n_val_texts`` sentences (``--n-small``) to show how far that cheaper
                       estimate is from it
    seconds            wall and process-CPU seconds of ``tune_task`` (the part of a probe's time
                       per tuned task that depends on the setting)

and prints one row per setting: mean target gain (accuracy, margin), mean / median / min / max
val-ppl change, mean change on the other tasks, seconds per tuned task; then the setting chosen by
the rule of ``taskspace_utils.ftgd.FTGDConfig`` (:data:`RULE_MAX_PPL`, :data:`RULE_TIE_ACC`).

Cost (``--cost``). The probe's time per tuned task and the share of the validation perplexity in
it: ``probe_transfer`` of ``--cost-tasks`` tasks (default: the quick profile's 12 transfer tasks,
differentials given) for each probe of ``--cost-probes`` (``lr:steps:batch:n_val_texts:pairs``,
default :data:`COST_PROBES`: the quick profile's old probe and the new default at quick-profile
step counts on 32 train / 32 test pairs, the default probe on 100 / 100); prints the mean seconds
per tuned task of tuning, evaluating and scoring the validation text, the perplexity's share, the
mean self-transfer and the median / max perplexity change.

    python benchmarks/bench_ftgd_premise.py [--model tiny-m] [--n-val 300] [--out /tmp/premise.csv]
    python benchmarks/bench_ftgd_premise.py --cost [--cost-probes 1e-4:50:16:100:100 ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import suite_or_shaped_model  # noqa: E402

#: 4 tasks of 4 phenomena (anaphor agreement, subject-verb agreement, NPI licensing, island effects).
TASKS = ["anaphor_gender_agreement", "regular_plural_subject_verb_agreement_1", "npi_present_1", "wh_island"]
#: (label, lr, steps, batch size): the issue's six settings, then four in between.
SETTINGS = [
    ("probing 1e-3 20x20", 1e-3, 20, 20), ("quick 1e-3 10x20", 1e-3, 10, 20), ("03 1e-4 50x16", 1e-4, 50, 16),
    ("3e-4 20x20", 3e-4, 20, 20), ("1e-4 20x20", 1e-4, 20, 20), ("3e-4 10x20", 3e-4, 10, 20),
    ("2e-4 20x20", 2e-4, 20, 20), ("3e-4 15x20", 3e-4, 15, 20), ("2e-4 30x20", 2e-4, 30, 20),
    ("1e-4 30x20", 1e-4, 30, 20),
]
#: The choice rule of ``FTGDConfig``'s defaults: among settings whose *largest* per-task val-ppl
#: change is at most RULE_MAX_PPL (the premise on every tuned task), the largest mean target accuracy
#: gain; settings within RULE_TIE_ACC of it tie, the fastest (CPU seconds) wins. Also printed: the
#: rule first written, on the median per-task change (``--`` the premise rule of the report).
RULE_MAX_PPL = 0.10
RULE_TIE_ACC = 0.01
#: The probes of ``--cost`` (``lr:steps:batch:n_val_texts:pairs``): the quick profile's old probe
#: (lr 1e-3, 10 x 20, 32 train / 32 test pairs from notebook 01), the default probe at quick-profile
#: step counts with and without the validation perplexity, and the default probe on 100 / 100 pairs.
COST_PROBES = ["1e-3:10:20:0:32", "1e-4:10:16:0:32", "1e-4:10:16:100:32", "1e-4:14:16:100:32", "1e-4:16:16:100:32",
               "1e-4:50:16:0:100", "1e-4:50:16:100:100"]
#: The quick profile's transfer tasks (profiles.yaml, anchors.transfer_tasks).
QUICK_TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "determiner_noun_agreement_1",
               "determiner_noun_agreement_2", "regular_plural_subject_verb_agreement_1",
               "irregular_plural_subject_verb_agreement_1", "npi_present_1", "sentential_negation_npi_licensor_present",
               "wh_island", "adjunct_island", "principle_A_case_1", "principle_A_domain_1"]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {os.getloadavg()}"


def choose(summary: pd.DataFrame, on: str = "ppl_max") -> str | None:
    """The setting the rule picks (:data:`RULE_MAX_PPL` on column ``on``: ``ppl_max`` for the rule
    of the defaults, ``ppl_median`` for the median-only one), or ``None`` when none qualifies."""
    kept = summary[summary[on] <= RULE_MAX_PPL]
    if kept.empty:
        return None
    tied = kept[kept["acc_gain"] >= kept["acc_gain"].max() - RULE_TIE_ACC]
    return str(tied["tune_cpu_s"].idxmin())


def bench_tradeoff(args) -> None:
    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.ftgd import FTGDConfig, applied, model_max_tokens, prepare_texts, tune_task, validation_texts
    from taskspace_utils.gradients import task_differential
    from taskspace_utils.probing import prepare_evaluation

    print(f"before: {_uptime()}", flush=True)
    (model, tok), what = suite_or_shaped_model(args.model)
    pairs = split_pairs(load_blimp(tasks=TASKS), n_train=100, n_test=100, seed=0)
    train, test = pairs[pairs.split == "train"], pairs[pairs.split == "test"]
    evaluation = prepare_evaluation(tok, test, TASKS)
    val = prepare_texts(tok, validation_texts(args.n_val), model_max_tokens(model))
    small = prepare_texts(tok, validation_texts(args.n_small), model_max_tokens(model))
    base = evaluation.evaluate(model)
    ppl_base, ppl_base_small = val.perplexity(model), small.perplexity(model)
    print(f"model: {what}; threads={torch.get_num_threads()}; {len(val)} validation sentences ({val.n_tokens:,} tokens), "
          f"base perplexity {ppl_base:.2f}", flush=True)
    differentials = {t: task_differential(model, tok, train[train.task == t]) for t in TASKS}
    settings = [s for s in SETTINGS if not args.only or s[0] in args.only]
    rows = []
    runs = [(s, t) for s in settings for t in TASKS]
    for (label, lr, steps, batch), task in tqdm(runs, desc="tuned tasks", unit="task"):
        config = FTGDConfig(k=0.01, lr=lr, steps=steps, batch_size=batch)
        wall, cpu = time.perf_counter(), time.process_time()
        delta = tune_task(model, tok, train[train.task == task], config, differential=differentials[task], task=task)
        tune_s, tune_cpu = time.perf_counter() - wall, time.process_time() - cpu
        with applied(model, delta):
            after = evaluation.evaluate(model)
            ppl, ppl_small = val.perplexity(model), small.perplexity(model)
        change = after[["accuracy", "mean_margin"]] - base[["accuracy", "mean_margin"]]
        others = change.drop(index=task)
        rows.append({"setting": label, "lr": lr, "steps": steps, "batch_size": batch, "task": task,
                     "acc_gain": change.loc[task, "accuracy"], "margin_gain": change.loc[task, "mean_margin"],
                     "other_acc_change": others["accuracy"].mean(),
                     "ppl_change": ppl / ppl_base - 1, "ppl_change_small": ppl_small / ppl_base_small - 1,
                     "tune_s": tune_s, "tune_cpu_s": tune_cpu})
        if args.out:
            pd.DataFrame(rows).to_csv(args.out, index=False)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("setting", sort=False).agg(
        acc_gain=("acc_gain", "mean"), margin_gain=("margin_gain", "mean"), ppl_mean=("ppl_change", "mean"),
        ppl_median=("ppl_change", "median"), ppl_min=("ppl_change", "min"), ppl_max=("ppl_change", "max"),
        ppl_small_median=("ppl_change_small", "median"), other_acc=("other_acc_change", "mean"),
        tune_s=("tune_s", "mean"), tune_cpu_s=("tune_cpu_s", "mean"))
    gap = (frame["ppl_change_small"] - frame["ppl_change"]).abs()
    print(f"\nafter: {_uptime()}")
    print(f"{len(TASKS)} tasks x 100 train / 100 test pairs, {len(val)} validation sentences; per setting means over tasks "
          "(ppl: relative validation-perplexity change, tuned / base - 1; tune_s: wall s per tuned task)")
    print(summary.to_string(float_format=lambda v: f"{v:+.3f}"))
    print(f"\nval-ppl change on {len(small)} vs. {len(val)} evenly spaced sentences: median |difference| {gap.median():.4f}, "
          f"max {gap.max():.4f}; Pearson {np.corrcoef(frame['ppl_change'], frame['ppl_change_small'])[0, 1]:.4f}")
    print(f"rule: every task's ppl change <= {RULE_MAX_PPL:.0%}, then the largest mean target accuracy gain "
          f"(ties within {RULE_TIE_ACC}) to the fastest -> {choose(summary)}; "
          f"the same on the median change alone -> {choose(summary, 'ppl_median')}")


def _probe_spec(text: str) -> tuple[float, int, int, int, int]:
    """``lr:steps:batch:n_val_texts:n_pairs`` -> numbers (``n_pairs`` train = test pairs per task)."""
    lr, steps, batch, n_val, n_pairs = text.split(":")
    return float(lr), int(steps), int(batch), int(n_val), int(n_pairs)


def bench_cost(args) -> None:
    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.ftgd import FTGDConfig
    from taskspace_utils.gradients import task_differential
    from taskspace_utils.probing import ProbingConfig, probe_transfer

    print(f"before: {_uptime()}", flush=True)
    (model, tok), what = suite_or_shaped_model(args.model)
    tasks = args.cost_tasks or QUICK_TASKS
    blimp = load_blimp(tasks=tasks)
    print(f"model: {what}; threads={torch.get_num_threads()}; {len(tasks)} tasks", flush=True)
    results, stores = [], {}
    for spec in args.cost_probes:
        lr, steps, batch, n_val, n_pairs = _probe_spec(spec)
        pairs = split_pairs(blimp, n_train=n_pairs, n_test=n_pairs, seed=0)
        if n_pairs not in stores:  # the gradient stage's differentials, as the probe reads them
            train = pairs[pairs.split == "train"]
            stores[n_pairs] = {t: task_differential(model, tok, train[train.task == t]) for t in tasks}
        config = ProbingConfig(tasks=tasks, n_train=n_pairs, n_test=n_pairs, save_deltas=False, n_val_texts=n_val,
                               ftgd=FTGDConfig(lr=lr, steps=steps, batch_size=batch))
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = probe_transfer(model, tok, pairs, folder, config, differentials=stores[n_pairs], progress=True)
            total = time.perf_counter() - started
        t, diag = result.timings, result.self_transfer
        ppl_s = t["ppl_seconds"].fillna(0).mean()
        results.append({"probe": spec, "tune_s": t["tune_seconds"].mean(), "eval_s": t["eval_seconds"].mean(),
                        "ppl_s": ppl_s, "task_s": t["tune_seconds"].mean() + t["eval_seconds"].mean() + ppl_s,
                        "probe_s": total, "ppl_share": ppl_s / (t["tune_seconds"] + t["eval_seconds"]).mean(),
                        "self_acc": diag["accuracy"].mean(), "self_margin": diag["margin"].mean(),
                        "ppl_change_median": t["val_ppl_change"].median(), "ppl_change_max": t["val_ppl_change"].max()})
        print(pd.DataFrame(results).tail(1).to_string(index=False, header=len(results) == 1), flush=True)
    print(f"\nafter: {_uptime()}")
    print("probe = lr:steps:batch:n_val_texts:pairs per task; seconds per tuned task (wall; task_s = tune + eval + ppl); "
          "ppl_share = ppl_s / (tune_s + eval_s); self_acc / self_margin: mean self-transfer")
    print(pd.DataFrame(results).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-m", help="model spec (default tiny-m, final step)")
    parser.add_argument("--n-val", type=int, default=300, help="validation sentences (trade-off)")
    parser.add_argument("--n-small", type=int, default=None, help="the cheaper estimate (default: the probe's n_val_texts)")
    parser.add_argument("--only", nargs="*", help="run only these settings (labels of SETTINGS)")
    parser.add_argument("--out", default=None, help="CSV of the per-task rows (trade-off)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost", action="store_true", help="the perplexity's share of a probe's time instead")
    parser.add_argument("--cost-probes", nargs="*", default=COST_PROBES,
                        help="probes of --cost, each lr:steps:batch:n_val_texts:pairs per task")
    parser.add_argument("--cost-tasks", nargs="*", default=None, help="tasks of the cost probe (default: quick's 12)")
    args = parser.parse_args(argv)
    if args.n_small is None:
        from taskspace_utils.probing.config import N_VAL_TEXTS
        args.n_small = N_VAL_TEXTS
    torch.set_num_threads(args.threads)
    bench_cost(args) if args.cost else bench_tradeoff(args)


if __name__ == "__main__":
    main()
