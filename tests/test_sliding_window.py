"""Sliding-window attention (Mistral, Qwen2, Qwen2 with mixed full and sliding layers) and models split over devices.

SPACE, SDSAT's token tree and self_spec's draft build their own masks; they must apply the window exactly as
the model does when it builds its own (AR, HF generate), or greedy output diverges once the context is longer
than the window. Tiny models, CPU, fp32.
"""

import pytest
import torch

import space
from space import window as window_module
from space.decoding.common import Model
from space.testing import DraftOracle, tiny_llama
from space.window import FULL, SLIDING, AttentionMasks, in_window, layer_windows
from tests.conftest import random_prompt

CONFIGS = {  # name -> tiny_llama arguments besides the window
    "mistral": dict(architecture="mistral"),
    "qwen2": dict(architecture="qwen2"),
    "qwen2-mixed": dict(architecture="qwen2", num_layers=3, max_window_layers=1),  # layer 0 full, 1-2 sliding
}
WINDOWS = [3, 5, 8, 16]
SPECULATIVE = {
    "space": {},
    "sdsat": {},
    "self_spec": dict(skip_layers={"attention": [1]}),
}


def windowed_model(config: str, window: int, seed: int = 0, **extra):
    return tiny_llama(seed=seed, sliding_window=window, sat_num=3, **CONFIGS[config], **extra)


def prompt_lengths(window: int) -> list[int]:
    return [max(1, window // 2), window + 3]  # shorter and longer than the window


# --- the rule ---------------------------------------------------------------------------------------


def test_in_window_hand_table():
    # queries at positions 4, 5, 5 (two rows may share a position, as SPACE's mask groups do); window 3
    allowed = torch.tensor([[1, 1, 1, 1, 1, 0],
                            [1, 1, 1, 1, 1, 1],
                            [1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    queries = torch.tensor([4, 5, 5])
    keys = torch.tensor([0, 1, 2, 3, 4, 5])
    expected = torch.tensor([[0, 0, 1, 1, 1, 0],  # 4 - j < 3: keys 2..4 (5 was not allowed)
                             [0, 0, 0, 1, 1, 1],  # 5 - j < 3: keys 3..5
                             [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(in_window(allowed, queries, keys, 3), expected)
    assert torch.equal(in_window(allowed, queries, keys, None), allowed)
    assert torch.equal(in_window(allowed, queries, keys, 1), allowed & (queries[:, None] == keys[None, :]))


def test_in_window_matches_transformers_sliding_mask():
    from transformers.masking_utils import sliding_window_causal_mask_function

    rule = sliding_window_causal_mask_function(4)
    positions = torch.arange(10)
    causal = positions[None, :] <= positions[:, None]
    ours = in_window(causal, positions, positions, 4)
    q, kv = torch.tensor(0), torch.tensor(0)
    theirs = torch.tensor([[bool(rule(q, q, q.new_tensor(i), kv.new_tensor(j))) for j in range(10)] for i in range(10)])
    assert torch.equal(ours, theirs)


def test_layer_windows_read_from_the_config():
    assert layer_windows(tiny_llama().config) == (None, None)
    assert layer_windows(tiny_llama(architecture="mistral", sliding_window=5).config) == (5, 5)
    assert layer_windows(tiny_llama(architecture="mistral", sliding_window=None).config) == (None, None)
    assert layer_windows(tiny_llama(architecture="qwen2", sliding_window=5).config) == (5, 5)
    assert layer_windows(tiny_llama(architecture="qwen2").config) == (None, None)  # use_sliding_window=False
    mixed = tiny_llama(architecture="qwen2", sliding_window=5, num_layers=3, max_window_layers=1).config
    assert mixed.layer_types == [FULL, SLIDING, SLIDING]
    assert layer_windows(mixed) == (None, 5, 5)


def test_masks_are_one_tensor_when_layers_agree_and_a_dict_by_layer_type_when_they_differ():
    positions = torch.arange(6)
    causal = positions[None, :] <= positions[:, None]
    uniform = AttentionMasks.for_config(tiny_llama(architecture="mistral", sliding_window=2).config)
    mask = uniform.build(causal, positions, positions, torch.float32)
    assert isinstance(mask, torch.Tensor) and mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0] == 0, in_window(causal, positions, positions, 2))
    mixed_config = tiny_llama(architecture="qwen2", sliding_window=2, num_layers=3, max_window_layers=1).config
    masks = AttentionMasks.for_config(mixed_config).build(causal, positions, positions, torch.float32)
    assert set(masks) == {FULL, SLIDING}
    assert torch.equal(masks[FULL][0, 0] == 0, causal)
    assert torch.equal(masks[SLIDING][0, 0] == 0, in_window(causal, positions, positions, 2))
    assert window_module.layer_mask(masks, mixed_config, 0) is masks[FULL]
    assert window_module.layer_mask(masks, mixed_config, 2) is masks[SLIDING]
    assert window_module.layer_mask(mask, mixed_config, 2) is mask


def test_unsupported_layer_types_are_refused_with_one_line():
    model = tiny_llama(architecture="qwen2", sliding_window=4)
    model.config.layer_types = ["chunked_attention", SLIDING]
    with pytest.raises(space.SpaceError, match="chunked_attention") as error:
        space.decode(model, random_prompt(6, seed=0), "space", max_new_tokens=4, eos_token_id=[])
    assert "\n" not in str(error.value)


# --- greedy identity --------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_speculative_methods_equal_ar_and_ar_equals_hf(config, window, use_cache):
    model = windowed_model(config, window, seed=window)
    for length in prompt_lengths(window):
        prompt = random_prompt(length, seed=100 * window + length)
        common = dict(max_new_tokens=window + 12, use_cache=use_cache, eos_token_id=[])
        assert length + common["max_new_tokens"] > window + 8  # the context outgrows the window
        reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
        assert space.decode(model, prompt, "hf", **common).tokens.tolist() == reference, "hf"
        for method, extra in SPECULATIVE.items():
            assert space.decode(model, prompt, method, **common, **extra).tokens.tolist() == reference, method


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_cases_need_the_window(config, monkeypatch):
    """Without the window in our masks, SPACE leaves AR: the identity cases do cross the window."""
    model = windowed_model(config, 3, seed=3)
    prompt = random_prompt(6, seed=306)
    common = dict(max_new_tokens=15, eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
    monkeypatch.setattr(window_module, "in_window", lambda allowed, *args: allowed)
    assert space.decode(model, prompt, "space", **common).tokens.tolist() != reference


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_oracle_drafts_are_all_accepted_under_a_window(config, use_cache):
    """Accepted candidates (SPACE) and drafts (SDSAT) far past the window keep AR's output and cache."""
    inner = windowed_model(config, 4, seed=7)
    oracle = DraftOracle(inner, "oracle")
    prompt = random_prompt(6, seed=7)
    common = dict(max_new_tokens=25, use_cache=use_cache, eos_token_id=[])
    reference = space.decode(oracle, prompt, "ar", **common).tokens
    oracle.set_reference(torch.cat([prompt[0], reference]))
    for tree in ({"tree": False}, {"copy_tokens": 0, "branch_width": 0, "cost_curve": {1: 1.0, 64: 1.0}}):
        result = space.decode(oracle, prompt, "space", **tree, **common)  # the chain, then the tree's chain alone
        assert result.tokens.tolist() == reference.tolist()
        assert result.stats.tokens_per_step[1:-1] == [4] * (len(result.stats.tokens_per_step) - 2)  # k + 1 = 4
    result = space.decode(oracle, prompt, "sdsat", **common)
    assert result.tokens.tolist() == reference.tolist()
    assert result.stats.acceptance_rate == 1.0


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_self_spec_draft_skipping_nothing_is_the_model_under_a_window(config, use_cache):
    """A draft that skips no layer must be the model itself, window included: every draft is accepted."""
    model = windowed_model(config, 4, seed=9)
    prompt = random_prompt(7, seed=9)
    common = dict(max_new_tokens=30, use_cache=use_cache, eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
    result = space.decode(model, prompt, "self_spec", skip_layers={"attention": [], "mlp": []},
                          draft_threshold=0.0, max_draft=6, **common)
    assert result.tokens.tolist() == reference
    assert sum(result.stats.drafted_per_step) > 20 and result.stats.acceptance_rate == 1.0


def tiny_gemma2(seed: int, window: int):
    """Gemma 2: sliding (local) and full layers alternate; eager attention (softcapping)."""
    import transformers

    from space.tokens import MaskSpec, SatSpec, record_mask_spec, record_sat_spec

    config = transformers.Gemma2Config(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=window, initializer_range=0.25, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.Gemma2ForCausalLM(config).float().eval()
    record_mask_spec(model.config, MaskSpec(95, 3, False))
    record_sat_spec(model.config, SatSpec(95, 3))
    model.generation_config = transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return model


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
def test_gemma2_local_and_global_layers(use_cache, monkeypatch):
    model = tiny_gemma2(seed=1, window=3)
    assert model.config.layer_types == [SLIDING, FULL]
    prompt = random_prompt(7, seed=1)
    common = dict(max_new_tokens=20, use_cache=use_cache, eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
    assert space.decode(model, prompt, "hf", **common).tokens.tolist() == reference
    for method, extra in SPECULATIVE.items():
        assert space.decode(model, prompt, method, **common, **extra).tokens.tolist() == reference, method
    monkeypatch.setattr(window_module, "in_window", lambda allowed, *args: allowed)  # the case needs the window
    assert space.decode(model, prompt, "space", **common).tokens.tolist() != reference


# --- sampling ---------------------------------------------------------------------------------------

SAMPLING = [
    ("space", dict(sampling_mode="exact")),
    ("space", dict(sampling_mode="original")),
    ("sdsat", dict(sampling_mode="exact")),
    ("sdsat", dict(sampling_mode="original")),  # the token tree: a mask of its own
    ("self_spec", dict(skip_layers={"attention": [1]})),
]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_sampling_paths_under_a_window(config, use_cache):
    """top_k=1 makes sampling greedy, so every sampling path must give AR's output; top_k=0 must run."""
    model = windowed_model(config, 4, seed=11)
    prompt = random_prompt(6, seed=11)
    common = dict(max_new_tokens=20, use_cache=use_cache, eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens.tolist()
    for method, extra in SAMPLING:
        greedy = space.decode(model, prompt, method, do_sample=True, top_k=1, seed=0, **common, **extra)
        assert greedy.tokens.tolist() == reference, (method, extra)
        sampled = space.decode(model, prompt, method, do_sample=True, seed=1, temperature=1.5, **common, **extra)
        assert len(sampled.tokens) == common["max_new_tokens"], (method, extra)


# --- device_map -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ar", "space", "sdsat", "self_spec"])
def test_a_model_split_over_devices_is_refused_with_one_line(method):
    model = tiny_llama(sat_num=3)
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1,
                           "lm_head": 1}
    extra = SPECULATIVE.get(method, {})
    with pytest.raises(space.SpaceError, match="split over devices") as error:
        space.decode(model, random_prompt(5, seed=0), method, max_new_tokens=4, eos_token_id=[], **extra)
    message = str(error.value)
    assert "\n" not in message and "cuda:0" in message and "cuda:1" in message and "one device" in message


@pytest.mark.parametrize("device_map", [
    {"": "cpu"},
    {"model": 0, "lm_head": "cuda:0"},  # accelerate writes 0, a user "cuda:0": one device
    {"model.embed_tokens": 0, "model.layers": "cpu", "model.norm": 0, "lm_head": "disk"},  # offload runs on cuda:0
])
def test_a_model_with_one_execution_device_passes_the_device_check(device_map):
    model = tiny_llama()
    model.hf_device_map = device_map
    Model(model)  # no error


def test_cpu_and_disk_offload_decode_as_the_plain_model(tmp_path):
    """accelerate runs offloaded blocks on the main device through hooks, self_spec's sub-block calls included."""
    accelerate = pytest.importorskip("accelerate")
    model = tiny_llama(sat_num=3)
    prompt = random_prompt(6, seed=0)
    common = dict(max_new_tokens=10, eos_token_id=[])
    expected = {method: space.decode(model, prompt, method, **common, **extra).tokens.tolist()
                for method, extra in {"ar": {}, **SPECULATIVE}.items()}
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert model.model.layers[1].mlp.up_proj.weight.is_meta  # really offloaded
    for method, extra in {"ar": {}, **SPECULATIVE}.items():
        assert space.decode(model, prompt, method, **common, **extra).tokens.tolist() == expected[method], method


def test_offloaded_embeddings_are_refused(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model = tiny_llama()
    device_map = {"model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.layers": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    with pytest.raises(space.SpaceError, match="embeddings or lm_head are offloaded"):
        space.decode(model, random_prompt(5, seed=0), "space", max_new_tokens=4, eos_token_id=[])
