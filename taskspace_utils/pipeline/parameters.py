"""What each notebook parameter accepts: one table of rules, checked before any work is done.

The profile schema (top of ``profiles.yaml``, :mod:`.profiles`) says *where* parameters are set;
:data:`RULES` says *what* a value may be. A rule is keyed by parameter name (a name means the same
thing in every notebook that declares it), or by ``(two-digit notebook number, name)`` where one
notebook differs (03's ``tasks`` are FTGD targets: a non-empty list). :func:`check_value` returns
``None`` for an accepted value, else a sentence saying what is accepted. Parameters without a rule
(a notebook's new parameter, a synthetic test notebook's) are accepted as given; a test keeps
every parameter of the kit's notebooks covered. Task names (``tasks``, ``watch_tasks``) are
checked against the data by :mod:`.validate`, device strings by :data:`DEVICE_PATTERN`.

Kinds: ``int`` (not a bool), ``float`` (an int or a float, not a bool), ``bool``, ``str``,
``tasks`` and ``sizes`` (non-empty lists of strings), ``choice`` (one of
``choices``). Bounds: ``low``/``high`` inclusive unless ``low_open`` (``0 < k <= 1``). ``none``:
``None`` is accepted too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Rule", "RULES", "DEVICE_PATTERN", "rule_for", "check_value"]

#: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (what ``torch.device`` takes for the kit's stages).
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts (see the module docstring)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    none: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        """The accepted values in words: ``an integer >= 1``, ``a number in (0, 1]``, ``one of ...``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "tasks": "a non-empty list of task names", "sizes": "a non-empty list of suite sizes"}[self.kind]
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {_num(self.low)}"
        return text + (" or null" if self.none else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_COUNT = Rule("int", low=1)
_FRACTION = Rule("float", low=0, high=1, low_open=True)
_POSITIVE = Rule("float", low=0, low_open=True)

#: The rules, by parameter name or ``(notebook number, name)``; see the module docstring.
RULES: dict = {
    # shared
    "smoke": Rule("bool"), "seed": Rule("int", low=0), "device": Rule("str", none=True),
    "tasks": Rule("tasks", none=True), "data_source": Rule("str"),
    "n_train": _COUNT, "n_test": _COUNT, "k": _FRACTION, "lr": _POSITIVE, "steps": _COUNT,
    "batch_size": _COUNT, "variant": Rule("choice", choices=("sentence", "critical")),
    # the names taskspace_utils.models.resolve_dtype accepts
    "dtype": Rule("choice", none=True, choices=("float32", "fp32", "float", "float64", "fp64", "double", "bfloat16",
                                                "bf16", "float16", "fp16", "half")),
    "optimizer": Rule("choice", choices=("adam", "sgd")), "objective": Rule("choice", choices=("margin", "logsigmoid")),
    # 00 suite build
    "sizes": Rule("sizes"), "suite_dir": Rule("str", none=True),
    "blimp_pairs_per_task": Rule("int", low=1, high=1000), "blimp_tasks": Rule("int", low=1, high=67),
    # 01 data
    "score_pairs_per_task": Rule("int", low=1, none=True),
    # 02 gradients
    "metric": Rule("choice", choices=("cosine", "pearson", "dot")), "per_module": Rule("bool"),
    "per_pair": Rule("bool"), "projection_dim": Rule("int", low=0),
    "store": Rule("choice", choices=("summary", "full")), "top_k": Rule("float", low=0, high=1, low_open=True, none=True),
    # 03 FTGD
    ("03", "tasks"): Rule("tasks"), "watch_tasks": Rule("tasks", none=True),
    "mask_mode": Rule("choice", choices=("fixed", "per_step")), "n_val_texts": _COUNT,
    # 04 probing, 05 comparison
    "baseline_model": Rule("str", none=True), "seed2": Rule("int", low=0, none=True),
    ("04", "n_val_texts"): Rule("int", low=0),  # 0: no validation perplexity in the probe rows
    "n_permutations": _COUNT, "n_boot": _COUNT,
}


def rule_for(stem: str, param: str) -> Rule | None:
    """The rule of ``param`` in notebook ``stem`` (its own, else the shared one; ``None``: no rule)."""
    return RULES.get((stem[:2], param), RULES.get(param))


def check_value(stem: str, param: str, value) -> str | None:
    """``None`` when ``value`` is accepted for ``param`` of notebook ``stem``, else what is accepted
    (``"expected an integer >= 1, got -5"``)."""
    rule = rule_for(stem, param)
    if rule is None or (value is None and rule.none):
        return None
    if _accepts(rule, value) and (param != "device" or value is None or DEVICE_PATTERN.match(str(value))):
        return None
    expected = rule.describe() if param != "device" else "cpu, cuda, cuda:N, mps or null"
    return f"expected {expected}, got {value!r}"


def _accepts(rule: Rule, value) -> bool:
    if rule.kind == "bool":
        return isinstance(value, bool)
    if rule.kind == "str":
        return isinstance(value, str) and value.strip() != ""
    if rule.kind == "choice":
        return value in rule.choices
    if rule.kind in ("tasks", "sizes"):
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if rule.kind == "int" and not isinstance(value, int):
        return False
    if not math.isfinite(value):
        return False
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        return False
    return rule.high is None or value <= rule.high
