"""The headline everywhere (findings issue, section 2): the margin transfer space leads every
comparison table, figure and finding (the accuracy transfer space is the secondary view), and
subnetwork sharing is read over the non-embedding parameters, with the embedding (``embed_in``) and
output (``embed_out``) matrices reported apart. Checked against hand computations on synthetic run
folders (no model needed)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from report_run import TASKS, make_run  # noqa: E402
from test_reporting_build import Page  # noqa: E402

from taskspace_utils import comparison as cmp  # noqa: E402
from taskspace_utils import reporting  # noqa: E402
from taskspace_utils.comparison import claims  # noqa: E402
from taskspace_utils.comparison import figures as cf  # noqa: E402
from taskspace_utils.comparison import sharing as sh  # noqa: E402
from taskspace_utils.data import load_blimp, split_pairs, task_metadata  # noqa: E402

#: Parameters per module of a toy network (gradient-stage module names; embed = embed_in, head = embed_out).
MODULE_SIZES = {"embed": 90, "layer0.attention": 24, "layer0.mlp": 40, "final_norm": 6, "head": 90}
BODY = ("layer0.attention", "layer0.mlp", "final_norm")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), 4, 4, 0)


@pytest.fixture(scope="module")
def meta(pairs):
    return task_metadata(pairs)


def _graded(meta, self_value, same_phenomenon, same_field, other_field) -> pd.DataFrame:
    """A transfer space with one value per relation of the two tasks."""
    phen, field = meta.loc[TASKS, "phenomenon"].to_numpy(), meta.loc[TASKS, "field"].to_numpy()
    same_p, same_f = phen[:, None] == phen[None, :], field[:, None] == field[None, :]
    values = np.where(same_p, same_phenomenon, np.where(same_f, same_field, other_field)).astype(float)
    np.fill_diagonal(values, self_value)
    return pd.DataFrame(values, index=TASKS, columns=TASKS)


def _unit(root, pairs, name="u@step100", step=100, family="u"):
    folder = root / name
    (folder / "data").mkdir(parents=True)
    pairs.to_parquet(folder / "data" / "pairs.parquet")
    (folder / "data" / "model_info.json").write_text(json.dumps(
        {"spec": name, "family": family, "step": step, "n_parameters": 1000}))
    (folder / "probing").mkdir()
    (folder / "gradients_sentence").mkdir()
    return folder


def _write_masks(folder, rng) -> dict[str, dict[str, np.ndarray]]:
    """Random subnetwork masks per task and module, written as the gradient stage writes them:
    ``mask_overlap.csv`` (whole model) and ``mask_overlap_modules.parquet`` (per-module Jaccard and
    the counts behind it). Returns ``{task: {module: bool mask}}``."""
    masks = {t: {m: rng.random(n) < 0.3 for m, n in MODULE_SIZES.items()} for t in TASKS}
    rows = []
    for m in MODULE_SIZES:
        for t in TASKS:
            for u in TASKS:
                a, b = masks[t][m], masks[u][m]
                union = (a | b).sum()
                rows.append({"module": m, "task": t, "other": u, "value": (a & b).sum() / union if union else np.nan,
                             "intersection": int((a & b).sum()), "size_task": int(a.sum()), "size_other": int(b.sum())})
    stage = folder / "gradients_sentence"
    pd.DataFrame(rows).to_parquet(stage / "mask_overlap_modules.parquet", index=False)
    whole = {t: np.concatenate([masks[t][m] for m in MODULE_SIZES]) for t in TASKS}
    pd.DataFrame([[_jaccard(whole[t], whole[u]) for u in TASKS] for t in TASKS], index=TASKS, columns=TASKS).to_csv(
        stage / "mask_overlap.csv")
    return masks


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _within_across(masks, meta, modules) -> tuple[float, float]:
    """Hand computation: mean Jaccard over the concatenated ``modules`` masks of unordered task
    pairs of one phenomenon, and of different phenomena."""
    cat = {t: np.concatenate([masks[t][m] for m in modules]) for t in TASKS}
    within, across = [], []
    for i, t in enumerate(TASKS):
        for u in TASKS[i + 1:]:
            same = meta.loc[t, "phenomenon"] == meta.loc[u, "phenomenon"]
            (within if same else across).append(_jaccard(cat[t], cat[u]))
    return float(np.mean(within)), float(np.mean(across))


# (a) the margin space is the headline of the comparison tables


def test_space_keys_say_what_they_hold():
    assert list(cmp.SPACE_FILES) == ["transfer_margin", "transfer_accuracy", "gradient"]
    assert cmp.SPACE_FILES["transfer_accuracy"] == "task_space_transfer.csv"  # the file name on disk is kept
    assert cmp.HEADLINE == claims.HEADLINE == "transfer_margin" and cmp.SECONDARY == "transfer_accuracy"
    assert cmp.SPACE_LABELS["transfer_accuracy"] == "accuracy transfer (secondary)"


def test_generalisation_summary_defaults_to_the_margin_space(tmp_path, pairs, meta):
    folder = _unit(tmp_path, pairs)
    _graded(meta, 2.0, 1.0, 0.4, 0.0).to_csv(folder / "probing" / "task_space_transfer_margin.csv")
    _graded(meta, 0.1, 0.0, 0.025, 0.025).to_csv(folder / "probing" / "task_space_transfer.csv")
    units = cmp.discover_units(tmp_path)
    summary = cmp.generalisation_summary(units)
    row = summary.loc["u@step100"]
    assert row["space"] == "transfer_margin"
    # margin: transfer / self-transfer = 1/2 within the phenomenon, 0.4/2 in the field, 0 elsewhere
    assert (row["same_phenomenon"], row["same_field"], row["other_field"]) == pytest.approx((0.5, 0.2, 0.0))
    secondary = cmp.generalisation_summary(units, "transfer_accuracy").loc["u@step100"]
    assert (secondary["same_phenomenon"], secondary["other_field"]) == pytest.approx((0.0, 0.25))
    with pytest.raises(ValueError, match="now 'transfer_accuracy'"):
        cmp.generalisation_summary(units, "transfer")


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory):
    """The report tests' synthetic run, its gradient stages rewritten with per-module counts."""
    root = make_run(tmp_path_factory.mktemp("run"), compare=False)
    rng = np.random.default_rng(5)
    masks = {folder.name: _write_masks(folder, rng) for folder in sorted(root.glob("*@step*"))}
    tables = cmp.compare_units(root, config=cmp.ComparisonConfig(n_permutations=19, n_boot=20))
    return root, tables, masks


def test_comparison_tables_lead_with_the_margin_space(counted_run):
    root, tables, _ = counted_run
    for name in ("alignment", "baseline", "stability"):
        spaces = list(dict.fromkeys(tables[name]["space"]))
        assert set(spaces) == {"transfer_margin", "transfer_accuracy", "gradient"}, name
        assert spaces[0] == "transfer_margin", name
    gen = pd.read_csv(root / "comparison" / "generalisation.csv", index_col=0)
    assert gen["space"].iloc[0] == "transfer_margin" and set(gen["space"]) == {"transfer_margin", "transfer_accuracy"}
    lines = cmp.describe_findings(tables)
    assert "margin transfer space" in lines[0]
    saved = reporting.read_tables(root)
    assert reporting.headline_space(saved) == "transfer_margin"
    fig, _ = cf.alignment_figure(saved)
    left, right = fig.axes[:2]
    assert "margin transfer" in left.get_title()
    assert any("accuracy transfer (secondary)" in t.get_text() for t in right.get_legend().get_texts())


# (b) sharing over non-embedding parameters, the embedding and output matrices apart


def test_sharing_table_non_embedding_headline_and_matrices_apart(counted_run, meta):
    root, tables, masks = counted_run
    share = tables["sharing"].loc["tiny-a@step10"]
    assert list(share["scope"]) == ["non-embedding", "embedding (embed_in)", "output (embed_out)", "all parameters"]
    rows = share.set_index("scope")
    unit = masks["tiny-a@step10"]
    for scope, modules in [("non-embedding", BODY), ("embedding (embed_in)", ["embed"]),
                           ("output (embed_out)", ["head"]), ("all parameters", list(MODULE_SIZES))]:
        within, across = _within_across(unit, meta, modules)
        assert rows.loc[scope, "within_mean"] == pytest.approx(within, abs=1e-12), scope
        assert rows.loc[scope, "difference"] == pytest.approx(within - across, abs=1e-12), scope
    held = np.mean([unit[t]["embed"].sum() / sum(unit[t][m].sum() for m in MODULE_SIZES) for t in TASKS])
    assert rows.loc["embedding (embed_in)", "subnetwork_fraction"] == pytest.approx(held)
    # the same non-embedding space as the claims' C2
    space, label = cmp.overlap_space(root / "tiny-a@step10")
    mine = sh.jaccard_from_counts(sh.overlap_counts(root / "tiny-a@step10"), BODY)
    assert label == "overlap (non-embedding)" and np.allclose(space.to_numpy(), mine.loc[space.index, space.columns])
    assert set(cmp.headline_sharing(tables["sharing"])["scope"]) == {"non-embedding"}


def test_sharing_by_module_rows(counted_run, meta):
    root, tables, masks = counted_run
    table = cmp.sharing_by_module(root / "tiny-a@step100")
    assert list(table.index) == ["non-embedding", *BODY, "embedding (embed_in)", "output (embed_out)"]
    within, _ = _within_across(masks["tiny-a@step100"], meta, BODY)
    assert table.loc["non-embedding", "same_phenomenon"] == pytest.approx(within, abs=1e-12)
    within, _ = _within_across(masks["tiny-a@step100"], meta, ["head"])
    assert table.loc["output (embed_out)", "same_phenomenon"] == pytest.approx(within, abs=1e-12)
    assert "module" in tables["sharing_modules"]


def test_report_and_figures_headline_non_embedding_sharing(counted_run):
    root, _, _ = counted_run
    saved = reporting.read_tables(root)
    table = reporting.findings_table(saved)
    sharing = table[table.question == "sharing"].comparison.tolist()
    assert sharing[0] == "subnetwork overlap within − across phenomena (non-embedding), tiny-a@step100"
    assert {"subnetwork overlap within − across phenomena (embedding (embed_in)), tiny-a@step100",
            "subnetwork overlap within − across phenomena (output (embed_out)), tiny-a@step100"} <= set(sharing)
    assert "(non-embedding parameters)" in reporting.sharing_paragraph(saved)
    fig, _ = cf.sharing_figure(saved)
    assert "non-embedding" in fig.axes[0].get_title() and len(fig.axes) == 2
    text = reporting.build_report(root)
    head, *rows = Page(text).tables["sharing-table"]
    scopes = [r[head.index("scope")] for r in rows]
    assert scopes[0] == "non-embedding" and {"embedding (embed_in)", "output (embed_out)"} <= set(scopes)
    assert "Findings are read on the margin transfer space" in text


def test_tables_written_before_the_rename_read_with_their_meaning(tmp_path):
    folder = tmp_path / "comparison"
    folder.mkdir()
    pd.DataFrame({"unit": ["a"], "space": ["transfer"], "hypothesis": ["phenomenon"], "controlled": ["none"],
                  "statistic": [0.3], "p_value": [0.01]}).to_csv(folder / "alignment.csv", index=False)
    pd.DataFrame({"unit": ["a"], "difference": [0.1]}).set_index("unit").to_csv(folder / "sharing.csv")
    pd.DataFrame({"unit": ["a"], "space": ["layer0.mlp"], "same_phenomenon": [0.2]}).to_csv(
        folder / "sharing_modules.csv", index=False)
    saved = reporting.read_tables(tmp_path)
    assert list(saved["alignment"]["space"]) == ["transfer_accuracy"]
    assert list(saved["sharing"]["scope"]) == ["all parameters"]
    assert list(saved["sharing_modules"]["module"]) == ["layer0.mlp"]
