"""HF baselines (`hf`, `prompt_lookup`): the per-forward log that turns cache lengths into tokens per forward,
and prompt lookup on a prompt it can copy from. Tiny models, CPU, fp32."""

import pytest
import torch

import space
from space.decoding.hf import _ForwardLog
from space.testing import tiny_llama

CYCLE = [11, 23, 35, 47, 59, 71, 83]


def successor_model(cycle=CYCLE, seed=0):
    """A tiny LLaMA whose greedy next token depends only on the current one: `cycle[i] -> cycle[i+1]`.

    Attention and MLP outputs are zeroed, so the last hidden row is the normalised embedding of the
    current token; lm_head rows are set so that this row scores highest at the token's successor.
    """
    model = tiny_llama(seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.get_input_embeddings().weight
        rows = embeddings / embeddings.norm(dim=-1, keepdim=True)
        head = model.get_output_embeddings().weight
        head.zero_()
        for current, successor in zip(cycle, cycle[1:] + cycle[:1]):
            head[successor] = 50 * rows[current]
    return model


def cycle_prompt(repeats=2, start=0):
    return torch.tensor([(CYCLE * (repeats + 1))[start : start + repeats * len(CYCLE)]])


def test_successor_model_follows_its_cycle():
    result = space.decode(successor_model(), cycle_prompt(), "ar", max_new_tokens=14, eos_token_id=[])
    assert result.tokens.tolist() == CYCLE * 2


@pytest.mark.parametrize("max_new_tokens", [1, 5, 30, 64])
def test_prompt_lookup_copies_several_tokens_per_forward(max_new_tokens):
    model, prompt = successor_model(), cycle_prompt()
    ar = space.decode(model, prompt, "ar", max_new_tokens=max_new_tokens, eos_token_id=[])
    lookup = space.decode(model, prompt, "prompt_lookup", max_new_tokens=max_new_tokens, eos_token_id=[],
                          prompt_lookup_num_tokens=5)
    assert torch.equal(lookup.tokens, ar.tokens)
    stats = lookup.stats
    assert sum(stats.tokens_per_step) == max_new_tokens
    assert len(stats.tokens_per_step) == stats.steps
    assert all(1 <= emitted <= 6 for emitted in stats.tokens_per_step)  # a draft of 5 plus the bonus at most
    if max_new_tokens >= 30:
        assert stats.mean_tokens_per_step > 3
        assert stats.steps < max_new_tokens / 3


def test_prompt_lookup_forwards_are_counted_once_each(monkeypatch):
    """`steps` equals the number of model forwards HF actually ran."""
    model, prompt = successor_model(), cycle_prompt()
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        result = space.decode(model, prompt, "prompt_lookup", max_new_tokens=40, eos_token_id=[])
    finally:
        handle.remove()
    assert result.stats.steps == len(forwards) < 40


def test_hf_generate_is_one_token_per_forward():
    model = tiny_llama(seed=3)
    prompt = torch.randint(3, 80, (1, 6), generator=torch.Generator().manual_seed(3))
    for use_cache in (True, False):
        result = space.decode(model, prompt, "hf", max_new_tokens=9, eos_token_id=[], use_cache=use_cache)
        assert result.stats.tokens_per_step == [1] * 9


# --- the per-forward log on scripted cache lengths ---------------------------------------------


class _FakeCache:
    def __init__(self, length):
        self.length = length

    def get_seq_length(self):
        return self.length


def _log_of(lengths, name="cache"):
    """Feed the hook the cache lengths of a run, under the given argument name (None: no cache)."""
    log = _ForwardLog(torch.nn.Identity())
    for length in lengths:
        log._hook(None, (), {name: _FakeCache(length) if length is not None else None})
    return log


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_log_turns_cache_growth_into_tokens_per_forward(name):
    # prompt of 5: prefill (cache 0) emits 1; then forwards see 5, 6, 9, 10 -> they emitted 1, 3, 1, rest
    stats = _log_of([0, 5, 6, 9, 10], name).stats(prompt_length=5, generated=8)
    assert stats.tokens_per_step == [1, 1, 3, 1, 2]
    assert stats.accepted_per_step == [0, 0, 2, 0, 1]
    assert stats.steps == 5


def test_forward_log_when_the_prefill_also_verifies_a_draft():
    # transformers >= 5.24: the first forward feeds prompt + draft; prompt 5 -> cache 8 means 3 accepted + bonus
    stats = _log_of([0, 8, 9, 15], "cache").stats(prompt_length=5, generated=12)
    assert stats.tokens_per_step == [4, 1, 6, 1]
    assert stats.accepted_per_step == [3, 0, 5, 0]


def test_forward_log_when_the_prefill_gets_no_cache():
    # transformers < 5.24 creates the cache inside the first forward: that forward sees none
    stats = _log_of([None, 5, 6, 9]).stats(prompt_length=5, generated=7)
    assert stats.tokens_per_step == [1, 1, 3, 2]


def test_forward_log_single_forward_and_no_cache():
    assert _log_of([0]).stats(prompt_length=3, generated=1).tokens_per_step == [1]
    assert _log_of([0]).stats(prompt_length=3, generated=5).tokens_per_step == [5]
    assert _log_of([None, None, None]).stats(prompt_length=3, generated=3).tokens_per_step == [1, 1, 1]


def test_forward_log_reads_a_cache_under_the_old_name_as_well_as_the_new():
    new, old = _log_of([0, 4, 8], "cache"), _log_of([0, 4, 8], "past_key_values")
    assert new.cache_lengths == old.cache_lengths == [0, 4, 8]


def test_prompt_lookup_without_the_cache_is_one_clear_error():
    with pytest.raises(space.SpaceError, match="prompt_lookup needs the KV cache"):
        space.decode(tiny_llama(seed=0), cycle_prompt(), "prompt_lookup", max_new_tokens=4, use_cache=False)
