"""Shared helpers of the probing tests: a simulated kill of :func:`taskspace_utils.probing.probe_transfer`
after its first tuned task, for the resume tests of ``test_probing_probe`` and ``test_ftgd_premise``."""

from __future__ import annotations

from taskspace_utils.probing import probe


def kill_after_first_tune(monkeypatch) -> list[str]:
    """Patch ``probe.tune_task`` so that the first call tunes as usual and the second raises
    ``KeyboardInterrupt`` (a kill between two tasks). Returns the list of tasks tuned before the kill;
    ``monkeypatch.undo()`` or ``monkeypatch.setattr(probe, "tune_task", real)`` restores it."""
    real_tune, tuned = probe.tune_task, []

    def killed_after_first(*args, **kwargs):
        if tuned:
            raise KeyboardInterrupt("simulated kill")
        tuned.append(kwargs["task"])
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(probe, "tune_task", killed_after_first)
    return tuned
