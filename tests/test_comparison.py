"""Tests for taskspace_utils.comparison on a synthetic run folder (no models needed)."""

import json
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from scipy import stats

from taskspace_utils import comparison as cmp
from taskspace_utils import gradients as G
from taskspace_utils import spaces as sp
from taskspace_utils.data import load_blimp, split_pairs, task_metadata

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "determiner_noun_agreement_1",
         "determiner_noun_agreement_2", "wh_island", "adjunct_island", "npi_present_1", "npi_present_2"]
PARAMS = {"gpt_neox.embed_in.weight": (10, 4), "gpt_neox.layers.0.attention.dense.weight": (4, 4),
          "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": (8, 4), "embed_out.weight": (10, 4)}


def _space(rng, meta, strength):
    phen = meta.loc[TASKS, "phenomenon"].to_numpy()
    same = (phen[:, None] == phen[None, :]).astype(float)
    values = strength * same + rng.normal(0, 1, (len(TASKS), len(TASKS)))
    return pd.DataFrame(values, index=TASKS, columns=TASKS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    pairs = split_pairs(load_blimp(tasks=TASKS), 4, 4, 0)
    meta = task_metadata(pairs)
    rng = np.random.default_rng(0)
    units = [("tiny-a", 0, 100), ("tiny-a", 10, 100), ("tiny-a", 100, 100), ("tiny-b", 100, 300)]
    for family, step, n in units:
        folder = root / f"{family}@step{step}"
        (folder / "data").mkdir(parents=True)
        pairs.to_parquet(folder / "data" / "pairs.parquet")
        (folder / "data" / "model_info.json").write_text(json.dumps(
            {"spec": f"{family}@step{step}", "family": family, "step": step, "source": "suite", "n_parameters": n}))
        pd.DataFrame({"task": TASKS, "accuracy": np.linspace(0.5, 0.5 + step / 400, len(TASKS)), "ties": 0}).to_csv(
            folder / "data" / "eval_blimp.csv", index=False)
        strength = step / 50
        (folder / "probing").mkdir()
        _space(rng, meta, strength).to_csv(folder / "probing" / "task_space_transfer.csv")
        _space(rng, meta, strength).to_csv(folder / "probing" / "task_space_transfer_margin.csv")
        grad = folder / "gradients_sentence"  # notebook 02's results folder
        grad.mkdir()
        g = _space(rng, meta, strength)
        ((g + g.T) / 2).to_csv(grad / "task_space_gradient.csv")
        m = np.abs(_space(rng, meta, strength).to_numpy()) / 10
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        pd.DataFrame(m, index=TASKS, columns=TASKS).to_csv(grad / "mask_overlap.csv")
        (grad / "differentials").mkdir()
        (grad / "config.json").write_text(json.dumps({"k": 0.25}))
        per_module = {}
        for t in TASKS:
            diff = {n: torch.randn(s, generator=torch.Generator().manual_seed(zlib.crc32(f"{t}{step}".encode())))
                    for n, s in PARAMS.items()}
            save_file(diff, str(grad / "differentials" / f"{t}.safetensors"))
            # in the files' (sorted) name order, as the gradient stage reads them back: the tensors of a
            # task share one random stream, so their values tie and the order breaks the ties
            masks = G.subnetwork_masks({n: diff[n] for n in sorted(diff)}, 0.25)
            for module, names in _modules().items():
                per_module.setdefault(module, {})[t] = G.pack_masks(masks, names)
        overlap = {m: G.packed_jaccard_space(p) for m, p in per_module.items()}
        G.modules_to_long(overlap).to_parquet(grad / "mask_overlap_modules.parquet", index=False)
    return root, pairs, meta


def _modules():
    groups = G.module_groups(list(PARAMS))
    return {m: [n for n in PARAMS if groups[n] == m] for m in dict.fromkeys(groups.values())}


def test_discover_units(run):
    root, _, _ = run
    units = cmp.discover_units(root)
    assert len(units) == 4
    assert list(units.loc[units.family == "tiny-a"].sort_values("step").is_final) == [False, False, True]
    assert units.loc["tiny-b@step100", "is_final"]
    with pytest.raises(FileNotFoundError, match="nope"):
        cmp.discover_units(root, ["nope"])


def test_unit_alignment_matches_direct_spearman(run):
    root, pairs, meta = run
    config = cmp.ComparisonConfig(n_permutations=99, n_boot=0, lexical_controls=True)
    table = cmp.unit_alignment(root / "tiny-a@step100", config)
    raw = table[(table.space == "transfer_accuracy") & (table.hypothesis == "phenomenon") & (table.controlled == "none")].iloc[0]
    space = pd.read_csv(root / "tiny-a@step100" / "probing" / "task_space_transfer.csv", index_col=0).loc[sorted(TASKS), sorted(TASKS)]
    hyp = sp.hypothesis_space(meta.loc[sorted(TASKS)], "phenomenon")
    off = ~np.eye(len(TASKS), dtype=bool)
    want = stats.spearmanr(space.to_numpy()[off], hyp.to_numpy()[off]).statistic
    assert raw.statistic == pytest.approx(want, abs=1e-12)
    assert set(table.controlled) == {"none", "critical_words, vocabulary"}


def test_baseline_differences_are_differences_of_alignments(run):
    root, _, _ = run
    config = cmp.ComparisonConfig(n_permutations=49, n_boot=50, lexical_controls=False)
    units = cmp.discover_units(root)
    base = cmp.baseline_differences(units, config)
    assert set(base.unit) == {"tiny-a@step10", "tiny-a@step100"}  # tiny-b has no step 0
    row = base[(base.unit == "tiny-a@step100") & (base.space == "gradient") & (base.hypothesis == "field")].iloc[0]
    a = cmp.unit_alignment(root / "tiny-a@step100", config)
    b = cmp.unit_alignment(root / "tiny-a@step0", config)
    pick = lambda t: t[(t.space == "gradient") & (t.hypothesis == "field")].statistic.iloc[0]  # noqa: E731
    assert row.difference == pytest.approx(pick(a) - pick(b), abs=1e-12)
    assert row.ci_low <= row.ci_high


def test_sharing_by_module_matches_hand_jaccard(run):
    root, _, meta = run
    from taskspace_utils.gradients import load_task_differentials, subnetwork_masks
    table = cmp.sharing_by_module(root / "tiny-a@step10")
    diffs = load_task_differentials(root / "tiny-a@step10" / "gradients_sentence")
    masks = {t: subnetwork_masks(d, 0.25) for t, d in diffs.items()}
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    jac = []
    for i, t in enumerate(sorted(masks)):
        for u in sorted(masks)[i + 1:]:
            if meta.loc[t, "phenomenon"] == meta.loc[u, "phenomenon"]:
                a, b = masks[t][name], masks[u][name]
                union = (a | b).sum().item()
                jac.append((a & b).sum().item() / union if union else np.nan)
    assert table.loc["layer0.mlp", "same_phenomenon"] == pytest.approx(np.nanmean(jac), abs=1e-6)


def test_compare_units_writes_everything_and_findings(run, tmp_path):
    root, _, _ = run
    config = cmp.ComparisonConfig(n_permutations=49, n_boot=20)
    tables = cmp.compare_units(root, config=config, out_dir=tmp_path / "cmp")
    for name in ["units", "accuracy", "alignment", "baseline", "generalisation", "sharing", "sharing_modules", "stability"]:
        assert (tmp_path / "cmp" / f"{name}.csv").exists(), name
        assert not tables[name].empty, name
    assert tables["accuracy"].loc["tiny-a@step100", "blimp_accuracy"] == pytest.approx(np.mean(np.linspace(0.5, 0.75, 8)))
    stab = tables["stability"]
    assert len(stab[(stab.family == "tiny-a") & (stab.space == "transfer_margin")]) == 2
    assert len(stab[(stab.family == "tiny-a") & (stab.space == "transfer_accuracy")]) == 2
    lines = cmp.describe_findings(tables)
    assert any("step 0" in line for line in lines) and all(isinstance(x, str) for x in lines)
    assert json.loads((tmp_path / "cmp" / "config.json").read_text())["config"]["n_permutations"] == 49


def test_notebook_05_smoke(run, tmp_path):
    from conftest import run_notebook
    root, _, _ = run
    run_notebook("05_scale_and_checkpoints.ipynb", tmp_path / "nb", run_dir=str(root), smoke=True)
    assert (root / "comparison" / "alignment.csv").exists()
    out = (tmp_path / "nb" / "05_scale_and_checkpoints.ipynb").read_text()
    assert "•" in out and "step 0" in out  # the generated findings were printed


def test_single_unit_with_three_tasks_degrades_gracefully(tmp_path):
    """A smoke run (one unit, three tasks) cannot support every statistic: those are skipped with a
    warning naming the reason, and the rest of the tables are still written."""
    tasks = TASKS[:2] + ["npi_present_1"]
    pairs = split_pairs(load_blimp(tasks=tasks), 4, 4, 0)
    unit = tmp_path / "u"
    (unit / "data").mkdir(parents=True)
    pairs.to_parquet(unit / "data" / "pairs.parquet")
    (unit / "data" / "model_info.json").write_text(json.dumps({"spec": "x", "family": "x", "step": 5, "n_parameters": 10}))
    rng = np.random.default_rng(0)
    (unit / "probing").mkdir()
    pd.DataFrame(rng.normal(size=(3, 3)), index=tasks, columns=tasks).to_csv(unit / "probing" / "task_space_transfer.csv")
    overlap = np.abs(rng.normal(size=(3, 3)))
    (unit / "gradients_sentence").mkdir()
    pd.DataFrame(overlap + overlap.T, index=tasks, columns=tasks).to_csv(unit / "gradients_sentence" / "mask_overlap.csv")
    with pytest.warns(UserWarning, match="subnetwork sharing of u: skipped"):
        tables = cmp.compare_units(tmp_path, config=cmp.ComparisonConfig(n_permutations=19, n_boot=10))
    assert tables["sharing"].empty and not tables["alignment"].empty
    assert (tmp_path / "comparison" / "stability.csv").exists()
