"""RoPE scaling: every rope_type transformers ships keeps every lossless method equal to AR, near and across the
length at which `dynamic` and `longrope` change their frequencies.

Those two pick their frequencies from the longest position in a forward (transformers' `dynamic_rope_update`),
and a speculative forward feeds rows ahead of AR's position; `Model.position_limit` keeps every forward's rows
on AR's side of the threshold. Without it SPACE's tree and chain, SDSAT and self_spec diverged from AR here."""

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import space
from space.decoding.common import Model
from space.testing import tiny_llama

HEAD_DIM = 16  # tiny_llama: hidden 64, 4 heads
THRESHOLD, CONTEXT = 32, 64


def rope(kind: str) -> dict:
    """Parameters of each rope type, with `original_max_position_embeddings` at THRESHOLD where it takes one."""
    extra = {
        "default": {}, "linear": dict(factor=2.0), "dynamic": dict(factor=2.0), "proportional": {},
        "yarn": dict(factor=2.0, original_max_position_embeddings=THRESHOLD),
        "longrope": dict(short_factor=[1.0] * (HEAD_DIM // 2), long_factor=[4.0] * (HEAD_DIM // 2),
                         original_max_position_embeddings=THRESHOLD),
        "llama3": dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=THRESHOLD),
    }
    return dict(rope_type=kind, rope_theta=10000.0, **extra[kind])


KINDS = ["default", *ROPE_INIT_FUNCTIONS]
METHODS = {"space": {}, "space-chain": dict(tree=False), "sdsat": {},
           "self_spec": dict(skip_layers={"attention": [1], "mlp": []}, draft_threshold=0.0)}


def test_every_shipped_rope_type_is_covered():
    assert set(KINDS) <= {"default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"}, \
        "transformers ships a rope type these tests do not know: add its parameters to rope()"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_every_method_equals_ar_near_and_across_the_threshold(kind, use_cache):
    """Prompts ending before, at and after the threshold; answers running to the end of the context (where
    `dynamic` would rescale)."""
    for seed in range(3):
        model = tiny_llama(seed=seed, mask_num=3, sat_num=3, vocab_size=32, max_position_embeddings=CONTEXT,
                           rope_parameters=rope(kind))
        for length in (THRESHOLD - 6, THRESHOLD, THRESHOLD + 10):
            prompt = torch.randint(3, 12, (1, length), generator=torch.Generator().manual_seed(seed + length))
            common = dict(max_new_tokens=CONTEXT - length, eos_token_id=[], use_cache=use_cache)
            reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
            for label, options in METHODS.items():
                got = space.decode(model, prompt, label.split("-")[0], **common, **options).tokens.tolist()
                assert got == reference, (kind, seed, length, label)


def test_the_position_limit_follows_the_threshold_of_each_rope_type():
    def limits(parameters: dict, committed: list[int]):
        model = tiny_llama(seed=0, max_position_embeddings=CONTEXT, rope_parameters=parameters)
        return [Model(model).position_limit(n) for n in committed]

    assert limits(rope("longrope"), [5, THRESHOLD, THRESHOLD + 1]) == [THRESHOLD - 1, THRESHOLD - 1, None]
    assert limits(rope("dynamic"), [5, CONTEXT]) == [CONTEXT - 1, CONTEXT - 1]  # rescaling starts past the context
    for kind in ("default", "linear", "yarn", "llama3"):
        assert limits(rope(kind), [5, THRESHOLD + 1]) == [None, None], kind
