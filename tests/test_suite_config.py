"""Tests for taskspace_utils.suite.config: saved steps, the learning-rate schedule (and why it is not
transformers' cosine schedule), and the default configs' sizes."""

from __future__ import annotations

import pytest
import torch

from taskspace_utils.suite import SUITE_SIZES, PretrainConfig, checkpoint_steps, count_parameters, default_config
from taskspace_utils.suite.config import learning_rate
from taskspace_utils.suite.training import model_config


def test_checkpoint_steps_are_log_spaced_then_even_and_end_at_the_final_step():
    assert checkpoint_steps(1200, 500) == [0, 1, 4, 16, 64, 256, 500, 1000, 1200]
    assert checkpoint_steps(12, 8) == [0, 1, 4, 8, 12]
    assert checkpoint_steps(1000, 500) == [0, 1, 4, 16, 64, 256, 500, 1000]


def test_learning_rate_warmup_then_cosine_to_the_floor():
    cfg = PretrainConfig(size="tiny-s", hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         max_steps=100, lr=1.0, warmup_fraction=0.1, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)   # (0 + 1) / 10
    assert learning_rate(9, cfg) == pytest.approx(1.0)   # end of warm-up
    assert learning_rate(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert learning_rate(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi / 2) = 0
    assert learning_rate(100, cfg) == pytest.approx(0.1)


def _all_suite_configs():
    return [default_config(size, smoke=smoke, device=device)
            for size in SUITE_SIZES for smoke, device in ((False, "cpu"), (False, "cuda"), (True, "cpu"))]


@pytest.mark.parametrize("cfg", _all_suite_configs(), ids=lambda c: f"{c.size}-{c.max_steps}")
def test_transformers_cosine_schedule_differs_only_in_the_warm_up(cfg):
    """Why learning_rate stays hand-written: transformers' schedule warms up one step later
    (``lr * s / W``, so step 0 gets 0) and would change every checkpoint after step 0."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warmup = max(1, round(cfg.warmup_fraction * cfg.max_steps))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, cfg.max_steps,
                                                           min_lr_rate=cfg.min_lr_ratio)
    theirs = [cfg.lr * schedule.lr_lambdas[0](s) for s in range(cfg.max_steps)]
    ours = [learning_rate(s, cfg) for s in range(cfg.max_steps)]
    differ = [s for s in range(cfg.max_steps) if theirs[s] != ours[s]]
    assert differ == list(range(warmup))  # every warm-up step, and only those
    assert theirs[0] == 0.0 and ours[0] == cfg.lr / warmup
    assert theirs[1:warmup + 1] == pytest.approx(ours[:warmup])  # theirs is ours one step later
    assert theirs[warmup:] == ours[warmup:]  # the cosine part: the same floats


def test_default_configs_grow_with_size_and_respect_the_parameter_cap():
    from transformers import GPTNeoXForCausalLM

    params = []
    tok = type("T", (), {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    for size in SUITE_SIZES:
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(model_config(default_config(size), tok))
        params.append(count_parameters(model))
        # untied embeddings: models.count_parameters (tied tensors once) = every tensor counted
        assert params[-1] == sum(p.numel() for p in model.parameters())
    assert params == sorted(params) and params[-1] <= 20_000_000
    assert default_config("tiny-l", device="cuda").max_steps > default_config("tiny-l").max_steps
    with pytest.raises(ValueError, match="tiny-xl"):
        default_config("tiny-xl")
