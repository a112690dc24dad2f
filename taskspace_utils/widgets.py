"""Interactive explorers of task spaces for the notebooks (ipywidgets; notebook 04).

Contents
--------
- :func:`transfer_explorer` (:class:`TransferExplorer`): pick a task or a phenomenon and a space;
  see what it transfers to (its row) and what transfers to it (its column), bars coloured by
  relation (:func:`taskspace_utils.plotting.plot_transfer_bars`).
- :func:`agreement_explorer` (:class:`AgreementExplorer`): pick two spaces (or a space and a
  hypothesis), optionally a control; see the scatter of their entries and the numbers of
  :func:`taskspace_utils.spaces.compare_spaces`.

Both are ``ipywidgets.VBox`` subclasses whose ``update()`` redraws from the current dropdown values
(it runs on every change and once at construction). The figure is rendered to PNG and put into the
``output`` widget's ``outputs`` directly, so no kernel is needed: tests construct an explorer, set
a dropdown and read ``explorer.figure``, ``explorer.output.outputs`` and ``explorer.result``.
Figures are closed after rendering, so the inline backend does not show them a second time.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from taskspace_utils.plotting import RELATION_COLOURS, order_tasks, plot_transfer_bars
from taskspace_utils.spaces import SpaceComparison, compare_spaces, relation_labels, space_entries, varies_off_diagonal

__all__ = ["TransferExplorer", "AgreementExplorer", "transfer_explorer", "agreement_explorer"]


def _show(output: widgets.Output, fig: Figure) -> None:
    """Replace the content of ``output`` by ``fig`` as a PNG and close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)},
            "metadata": {},
        },
    )


class TransferExplorer(widgets.VBox):
    """Dropdowns ``key`` (a task or a phenomenon) and ``space`` (a name of ``spaces``) above an
    output with two bar charts: ``key -> evaluated tasks`` and ``tuned tasks -> key``."""

    def __init__(self, spaces: Mapping[str, pd.DataFrame], metadata: pd.DataFrame):
        if not spaces:
            raise ValueError("spaces: need at least one task space")
        self.spaces, self.metadata = dict(spaces), metadata
        tasks = list(dict.fromkeys(t for s in self.spaces.values() for t in s.index))
        tasks = order_tasks(tasks, metadata)
        phenomena = list(dict.fromkeys(metadata.loc[tasks, "phenomenon"]))
        options = [(f"task: {t}", t) for t in tasks] + [(f"phenomenon: {p}", p) for p in phenomena]
        self.key = widgets.Dropdown(options=options, description="task", layout=widgets.Layout(width="480px"))
        self.space = widgets.Dropdown(options=list(self.spaces), description="space")
        self.message = widgets.HTML()
        self.output = widgets.Output()
        self.figure: Figure | None = None
        super().__init__([widgets.HBox([self.key, self.space]), self.message, self.output])
        self.key.observe(self.update, names="value")
        self.space.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Redraw for the current ``key`` and ``space``."""
        space, key = self.spaces[self.space.value], self.key.value
        meta = self.metadata.loc[[t for t in space.index if t in self.metadata.index]]
        if key not in space.index and key not in set(meta["phenomenon"]):
            self.message.value = f"<i>{html.escape(str(key))} is not in space {html.escape(self.space.value)}</i>"
            self.output.outputs, self.figure = (), None
            return
        self.message.value = ""
        n = len(space)
        fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.14 * n + 2), 8.5))
        plot_transfer_bars(space, key, self.metadata, direction="to", ax=axes[0])
        plot_transfer_bars(space, key, self.metadata, direction="from", ax=axes[1])
        fig.tight_layout()
        self.figure = fig
        _show(self.output, fig)


class AgreementExplorer(widgets.VBox):
    """Dropdowns ``a`` and ``b`` (any space or hypothesis) and ``control`` (none or one of
    ``controls``) above the numbers of ``compare_spaces(a, b, controls=[control])`` and a scatter of
    the paired entries coloured by relation (same phenomenon / same field / other)."""

    def __init__(
        self,
        spaces: Mapping[str, pd.DataFrame],
        metadata: pd.DataFrame,
        hypotheses: Mapping[str, pd.DataFrame] | None = None,
        controls: Mapping[str, pd.DataFrame] | None = None,
        method: str = "spearman",
        n_permutations: int = 1000,
        seed: int = 0,
    ):
        self.matrices = {f"space: {k}": v for k, v in spaces.items()}
        self.matrices.update({f"hypothesis: {k}": v for k, v in (hypotheses or {}).items()})
        if len(self.matrices) < 2:
            raise ValueError("need at least two spaces/hypotheses to compare")
        self.metadata, self.controls = metadata, dict(controls or {})
        self.method, self.n_permutations, self.seed = method, n_permutations, seed
        names = list(self.matrices)
        varying = [n for n in names[1:] if varies_off_diagonal(self.matrices[n])]
        second = next((n for n in varying if n.startswith("hypothesis: ")), varying[0] if varying else names[1])
        self.a = widgets.Dropdown(options=names, value=names[0], description="A")
        self.b = widgets.Dropdown(options=names, value=second, description="B")
        self.control = widgets.Dropdown(options=["(none)", *self.controls], description="control")
        self.numbers = widgets.HTML()
        self.output = widgets.Output()
        self.figure: Figure | None = None
        self.result: SpaceComparison | None = None
        super().__init__([widgets.HBox([self.a, self.b, self.control]), self.numbers, self.output])
        for w in (self.a, self.b, self.control):
            w.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Recompute the comparison and redraw for the current selections."""
        a, b = self.matrices[self.a.value], self.matrices[self.b.value]
        controls = None if self.control.value == "(none)" else {self.control.value: self.controls[self.control.value]}
        try:
            self.result = compare_spaces(
                a, b, method=self.method, n_permutations=self.n_permutations, seed=self.seed, controls=controls
            )
            entries = space_entries({"A": a, "B": b})
        except ValueError as error:  # e.g. too few common tasks, NaN entries, constant hypothesis
            self.numbers.value = f"<b>cannot compare:</b> {html.escape(str(error))}"
            self.output.outputs, self.figure, self.result = (), None, None
            return
        r = self.result
        kind = f"partial {r.method} (control: {html.escape(self.control.value)})" if r.partial else r.method
        self.numbers.value = (
            f"<b>{kind}</b> = {r.statistic:.3f}, permutation p = {r.p_value:.4f} "
            f"({r.n_permutations} label permutations, alternative: {r.alternative}); "
            f"{r.n_tasks} tasks, {r.n_entries} entries"
        )
        entries["relation"] = relation_labels(entries["tuned"].to_numpy(), entries["evaluated"].to_numpy(), self.metadata)
        fig, ax = plt.subplots(figsize=(6.5, 5))
        palette = {k: v for k, v in RELATION_COLOURS.items() if k != "self"}
        labels = {"A": self.a.value, "B": self.b.value}
        few = [c for c in ("B", "A") if entries[c].nunique() <= 5]
        if few:  # a binary (or few-level) hypothesis: one jittered strip per level, on x
            x, y = few[0], "A" if few[0] == "B" else "B"
            sns.stripplot(data=entries, x=x, y=y, hue="relation", palette=palette, ax=ax, size=3, alpha=0.6)
        else:
            x, y = "A", "B"
            sns.scatterplot(data=entries, x=x, y=y, hue="relation", palette=palette, ax=ax, s=12, alpha=0.6)
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels[y])
        ax.set_title(f"{'partial ' if r.partial else ''}{r.method} = {r.statistic:.3f} (p = {r.p_value:.3g})"
                     + (f"\ncontrol: {self.control.value}" if r.partial else ""))
        fig.tight_layout()
        self.figure = fig
        _show(self.output, fig)


def transfer_explorer(spaces: Mapping[str, pd.DataFrame], metadata: pd.DataFrame) -> TransferExplorer:
    """Widget: pick a task or phenomenon and a space, see what it transfers to and from."""
    return TransferExplorer(spaces, metadata)


def agreement_explorer(
    spaces: Mapping[str, pd.DataFrame],
    metadata: pd.DataFrame,
    hypotheses: Mapping[str, pd.DataFrame] | None = None,
    controls: Mapping[str, pd.DataFrame] | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> AgreementExplorer:
    """Widget: pick two spaces (or a space and a hypothesis) and see their agreement."""
    return AgreementExplorer(spaces, metadata, hypotheses, controls, n_permutations=n_permutations, seed=seed)
