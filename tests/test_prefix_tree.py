"""Prefix-tree packing in scoring: the tree structure, and scores equal to the plain per-sentence
loop (float64) for GPT-NeoX (SDPA and eager attention), Llama and GPT-2 built in the test."""

import numpy as np
import pytest
import torch

from taskspace_utils import prefix_tree
from taskspace_utils.scoring import (
    build_prefix_tree_rows, collate_prefix_tree, sentence_logprobs, supports_prefix_tree, tokenize_sentences,
)

# shared beginnings, a sentence that is a prefix of another, a one-token sentence, a long one
SENTENCES = ["The cat is here.", "The cat is here", "The cat was here.", "The cats are here.", "The dog is here.",
             "Dogs bark.", "Dogs barked.", "A", "Who did Amy see?", "Who did Amy say that Bob saw?",
             "These books aren't yellowing at all, said the librarian who had looked after them for years."]


def reference_logprob(model, tokenizer, sentence):
    ids = [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))


def _walk(tree, s):
    """Tokens of sequence ``s`` read back from the tree by following parents up from its last node."""
    row, positions = tree["sentence_row"][s], tree["sentence_positions"][s]
    tokens, parents = tree["tokens"][row], tree["parents"][row]
    out, p = [], int(positions[-1])
    while p > 0:
        out.append(tokens[p - 1])
        p = int(parents[p - 1])
    return out[::-1]


@pytest.mark.parametrize("row_tokens", [1, 6, 16, 1000])
def test_tree_rows_rebuild_every_sequence_and_share_prefixes(tiny_tokenizer, row_tokens):
    ids = tokenize_sentences(tiny_tokenizer, SENTENCES)
    tree = build_prefix_tree_rows(ids, row_tokens)
    for s, seq in enumerate(ids):
        assert _walk(tree, s) == list(seq)
        assert len(tree["sentence_positions"][s]) == len(seq)
    for row in range(len(tree["tokens"])):
        members = [tuple(ids[s]) for s in np.flatnonzero(tree["sentence_row"] == row)]
        distinct_prefixes = {seq[:i] for seq in members for i in range(1, len(seq) + 1)}
        assert len(tree["tokens"][row]) == len(distinct_prefixes)  # each prefix exactly once
        assert 1 + len(tree["tokens"][row]) <= row_tokens or len(members) == 1
    if row_tokens == 1000:
        assert len(tree["tokens"]) == 1
        assert len(tree["tokens"][0]) < sum(len(x) for x in ids)


def test_collate_mask_is_ancestor_relation(tiny_tokenizer):
    ids = tokenize_sentences(tiny_tokenizer, SENTENCES)
    tree = build_prefix_tree_rows(ids, 24)
    batch = collate_prefix_tree(tree, list(range(len(tree["tokens"]))), 0, 0)
    for k, (tokens, parents) in enumerate(zip(tree["tokens"], tree["parents"])):
        n = 1 + len(tokens)
        for p in range(n):
            anc, q, depth = {p}, p, 0
            while q > 0:
                q = int(parents[q - 1]); anc.add(q); depth += 1
            assert set(np.flatnonzero(batch["tree_mask"][k, p, :n].numpy())) == anc
            assert int(batch["position_ids"][k, p]) == depth
        assert not batch["tree_mask"][k, :n, n:].any()  # nothing attends to padding


@pytest.mark.parametrize("row_tokens", [1, 8, 32, 128])
def test_tree_scores_equal_plain_loop_float64(tiny_lm64, row_tokens):
    model, tok = tiny_lm64
    assert supports_prefix_tree(model)
    got = sentence_logprobs(model, tok, SENTENCES, packing="tree", row_tokens=row_tokens, batch_tokens=40)
    want = np.array([reference_logprob(model, tok, s) for s in SENTENCES])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    padded = sentence_logprobs(model, tok, SENTENCES, packing="padded")
    np.testing.assert_allclose(got, padded, rtol=0, atol=1e-10)


def _tiny(kind, tok, attn):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attn_implementation=attn)
    if kind == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=128, **common))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             intermediate_size=64, max_position_embeddings=128, **common))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common))
    return model.double().eval()


@pytest.mark.parametrize("kind,attn", [("gpt_neox", "eager"), ("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_tree_scores_equal_plain_loop_other_architectures(tiny_tokenizer, kind, attn):
    model = _tiny(kind, tiny_tokenizer, attn)
    assert supports_prefix_tree(model)
    got = sentence_logprobs(model, tiny_tokenizer, SENTENCES, packing="tree", row_tokens=16, batch_tokens=48)
    want = np.array([reference_logprob(model, tiny_tokenizer, s) for s in SENTENCES])
    # transformers' eager attention (GPT-NeoX, Llama) takes its softmax in float32 even for a float64
    # model, so rows of another width round differently there (seen: 3.5e-9, 7.4e-9); SDPA stays in float64 throughout.
    atol = 1e-7 if attn == "eager" else 1e-10
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    padded = sentence_logprobs(model, tiny_tokenizer, SENTENCES, packing="padded")
    np.testing.assert_allclose(padded, want, rtol=0, atol=atol)


def test_unsupported_model_is_refused_for_tree_and_falls_back_for_auto(tiny_lm64, monkeypatch):
    from taskspace_utils import scoring

    model, tok = tiny_lm64
    monkeypatch.setattr(prefix_tree, "_TREE_MODEL_TYPES", set())
    assert not supports_prefix_tree(model)
    with pytest.raises(ValueError, match="packing='tree' is not supported.*gpt_neox"):
        sentence_logprobs(model, tok, SENTENCES, packing="tree")
    want = np.array([reference_logprob(model, tok, s) for s in SENTENCES])
    np.testing.assert_allclose(sentence_logprobs(model, tok, SENTENCES), want, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="packing='rows'"):
        sentence_logprobs(model, tok, SENTENCES, packing="rows")


def test_tree_node_weights_cancel_on_shared_prefixes(tiny_tokenizer):
    ids = tokenize_sentences(tiny_tokenizer, ["The cat is here.", "The cat was here."])
    tree = build_prefix_tree_rows(ids, 64)
    batch = collate_prefix_tree(tree, [0], 0, 0, sentences=[0, 1], sentence_weights=[1.0, -1.0])
    shared = 0
    while ids[0][shared] == ids[1][shared]:
        shared += 1
    # only the nodes after the shared beginning remain, with weights +1 / -1
    assert len(batch["node_weight"]) == len(ids[0]) + len(ids[1]) - 2 * shared
    assert sorted(set(batch["node_weight"].tolist())) == [-1.0, 1.0]
