"""Tests of taskspace_utils.cpu_threads: every batch runs once, on several threads at one intra-op
thread each, with the caller's settings restored; errors reach the caller; and scores spread over
threads equal the one-thread loop bit for bit (probing evaluation and sentence scoring).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import taskspace_utils.cpu_threads as cpu_threads
import taskspace_utils.batching as batching
from taskspace_utils.cpu_threads import batch_threads, for_each_batch
from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.probing import prepare_evaluation
from taskspace_utils.scoring import sentence_logprobs


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def sequential(work, items, device):
    for item in items:
        work(item)


def test_every_item_runs_once_on_threads_of_one_intra_op_thread(two_threads):
    seen, threads, intra, mode = [], set(), set(), set()
    lock = threading.Lock()

    def work(item):
        with lock:
            seen.append(item)
            threads.add(threading.get_ident())
            intra.add(torch.get_num_threads())
            mode.add((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        time.sleep(0.001)  # releases the GIL, so that both threads take items

    with torch.inference_mode():
        for_each_batch(work, (i for i in range(200)), "cpu")  # a lazy iterator, as BatchPlan is
    assert sorted(seen) == list(range(200))
    assert threading.get_ident() in threads and len(threads) == 2  # the caller is one of the two
    assert intra == {1} and mode == {(True, False)}
    assert torch.get_num_threads() == 2


def test_one_thread_with_autograd_a_gpu_or_one_intra_op_thread(two_threads):
    assert torch.is_grad_enabled() and batch_threads("cpu") == 1
    with torch.no_grad():
        assert batch_threads("cpu") == 2
        assert batch_threads("cuda") == 1 and batch_threads(torch.device("cuda:0")) == 1
        torch.set_num_threads(1)
        assert batch_threads("cpu") == 1
    caller = []
    for_each_batch(lambda item: caller.append(threading.get_ident()), range(3), "cpu")  # grad on: here
    assert caller == [threading.get_ident()] * 3


def test_the_first_error_stops_the_others_and_is_raised(two_threads):
    done = []

    def work(item):
        if item == 3:
            raise ValueError("batch 3 is bad")
        done.append(item)

    with torch.no_grad(), pytest.raises(ValueError, match="batch 3 is bad"):
        for_each_batch(work, range(10_000), "cpu")
    assert len(done) < 9_999 and torch.get_num_threads() == 2


def test_threaded_scores_equal_the_one_thread_loop_bitwise(tiny_lm64, two_threads, monkeypatch):
    model, tok = tiny_lm64
    pairs = split_pairs(load_blimp(tasks=["anaphor_gender_agreement", "npi_present_1"]), 6, 10, seed=0)
    test = pairs[pairs.split == "test"]
    sentences = list(test["good"]) + list(test["bad"])
    prepared = prepare_evaluation(tok, test, batch_tokens=64)
    assert len(prepared.tree_batches) > 4
    threaded = prepared.margins(model), sentence_logprobs(model, tok, sentences, batch_tokens=64)
    monkeypatch.setattr(batching, "for_each_batch", sequential)  # the one loop both go through
    one_thread = prepared.margins(model), sentence_logprobs(model, tok, sentences, batch_tokens=64)
    for a, b in zip(threaded, one_thread):
        assert np.array_equal(a, b)
    assert cpu_threads.batch_threads("cpu") == 1  # grad is on again out here
