"""Tests of taskspace_utils.ftgd.config: FTGDConfig refuses bad values, naming the field."""

from __future__ import annotations

import pytest

from taskspace_utils.ftgd import FTGDConfig


@pytest.mark.parametrize("field, value", [("objective", "hinge"), ("control", "lora"), ("k", 0.0), ("k", 1.5),
                                          ("mask_mode", "each"), ("optimizer", "rmsprop"), ("steps", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        FTGDConfig(**{field: value})


def test_replace_and_uses_mask():
    config = FTGDConfig()
    assert config.replace(control="lm_good").control == "lm_good" and config.control == "ftgd"
    assert [FTGDConfig(control=c).uses_mask for c in ("ftgd", "all_params", "random_mask", "lm_good")] == [True, False, True, False]
