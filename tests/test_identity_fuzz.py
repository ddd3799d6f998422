"""Identity fuzz (slow suite): every lossless method equals greedy AR, token for token, on random configs.

A *case* is one (config, method) pair. Each config is a random tiny model (LLaMA, Mistral or Qwen2 with
full attention; hidden 32-64, 1-3 layers, GQA or MHA, tied or untied embeddings, 48-96 ids), a prompt
of 1-12 tokens (half of them from a 4-token alphabet, so prompt lookup finds n-grams), a budget of
10-32 new tokens, k in 1..6 (SPACE's masks and SDSAT's adaptive tokens), `mask_diff`, the KV cache on or
off, and, for half of the configs, an EOS id that AR produces strictly inside the budget (so stopping
is exercised; sometimes given as a list with an id that never occurs). Each config builds its model
once and checks all five lossless methods against `ar` with the same cache setting:
`space`, `sdsat`, `self_spec` (random skip set, max_draft, threshold), `prompt_lookup` (random draft
length; always cached, as HF requires) and `hf`.

An untrained model's masks and adaptive tokens almost never draft the right token, which would leave
the multi-token paths (cache compaction, EOS inside an accepted run, budget cuts mid-step) unfuzzed.
So in two thirds of the configs `space` and `sdsat` draft through `DraftOracle` around the same model,
copying AR's continuation (`oracle`: everything accepted) or a copy with ~30% of it corrupted (`mixed`:
anything from 0 to k accepted); they are then compared with `ar` of that wrapper (the same model, but
never predicting a mask id). NUM_CONFIGS x 5 methods >= 1,000 cases; running every
config through every method keeps the run near two minutes on two CPU cores.

Greedy, fp32. Every config comes from `random.Random(f"{FUZZ_SEED}-{index}")` alone, so one case reruns
by itself: `pytest tests/test_identity_fuzz.py -m slow -k case-0123`; a failure prints its config.
"""

import random

import pytest
import torch

import space
from space.testing import DraftOracle, tiny_llama

FUZZ_SEED = 14
NUM_CONFIGS = 200
METHODS = ("space", "sdsat", "self_spec", "prompt_lookup", "hf")
ARCHITECTURES = ("llama", "mistral", "qwen2")


def make_config(index: int) -> dict:
    rng = random.Random(f"{FUZZ_SEED}-{index}")
    hidden = rng.choice([32, 48, 64])
    heads = rng.choice([h for h in (2, 3, 4, 6, 8) if hidden % h == 0 and (hidden // h) % 2 == 0])
    layers = rng.randint(1, 3)
    k = rng.randint(1, 6)
    vocab = rng.choice([48, 64, 96])
    return dict(
        index=index,
        architecture=ARCHITECTURES[index % 3],  # each architecture in every third config
        vocab_size=vocab,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=rng.choice([d for d in range(1, heads + 1) if heads % d == 0]),
        num_layers=layers,
        tie_word_embeddings=rng.random() < 0.3,
        k=k,
        mask_diff=rng.random() < 0.5,
        use_cache=rng.random() < 0.5,
        eos_inside=rng.random() < 0.5,
        eos_as_list=rng.random() < 0.3,
        eos_draw=rng.random(),  # where the EOS comes from in AR's continuation
        prompt_length=rng.randint(1, 12),
        repetitive_prompt=rng.random() < 0.5,
        drafter=rng.choice(["model", "oracle", "mixed"]),  # what space and sdsat draft with
        prompt_seed=rng.randrange(2**31),
        max_new_tokens=rng.randint(10, 32),
        skip_layers={"attention": sorted(rng.sample(range(layers), rng.randint(0, layers))),
                     "mlp": sorted(rng.sample(range(layers), rng.randint(0, layers)))},
        max_draft=rng.randint(1, 8),
        draft_threshold=rng.choice([None, 0.0, 0.3, 0.8, 1.0]),
        adaptive_threshold=rng.random() < 0.5,
        prompt_lookup_num_tokens=rng.randint(1, 10),
    )


CONFIGS = [make_config(index) for index in range(NUM_CONFIGS)]


def build(config: dict):
    model = tiny_llama(
        seed=config["index"], vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        num_layers=config["num_layers"], num_heads=config["num_heads"], num_kv_heads=config["num_kv_heads"],
        mask_num=config["k"], mask_diff=config["mask_diff"], sat_num=config["k"],
        tie_word_embeddings=config["tie_word_embeddings"], architecture=config["architecture"],
        sliding_window=None,
    )
    generator = torch.Generator().manual_seed(config["prompt_seed"])
    high = 7 if config["repetitive_prompt"] else model.config.mask_id  # never a mask id
    prompt = torch.randint(3, high, (1, config["prompt_length"]), generator=generator)
    return model, prompt


def method_options(config: dict, method: str) -> dict:
    if method == "self_spec":
        return dict(skip_layers=config["skip_layers"], max_draft=config["max_draft"],
                    draft_threshold=config["draft_threshold"], adaptive_threshold=config["adaptive_threshold"])
    if method == "prompt_lookup":
        return dict(prompt_lookup_num_tokens=config["prompt_lookup_num_tokens"], use_cache=True)
    return {}


def reference_and_options(model, prompt, config: dict, reference=None):
    """AR's tokens and the common options; with `eos_inside`, an id AR emits before the budget ends.
    `reference`: AR's tokens without a stop id, when already known."""
    common = dict(max_new_tokens=config["max_new_tokens"], use_cache=config["use_cache"], eos_token_id=[])
    if reference is None:
        reference = space.decode(model, prompt, "ar", **common).tokens
    if config["eos_inside"]:
        eos = int(reference[int(config["eos_draw"] * (len(reference) - 1))])  # never the last token
        unused = min(set(range(3, model.config.vocab_size)) - set(reference.tolist()))  # a stop id AR never emits
        common["eos_token_id"] = [unused, eos] if config["eos_as_list"] else eos
        reference = space.decode(model, prompt, "ar", **common).tokens
        assert int(reference[-1]) == eos and len(reference) < config["max_new_tokens"]
    return reference, common


def drafting_model(model, prompt, config: dict):
    """The model space and sdsat decode (the model itself, or an oracle around it: see the docstring) and
    its AR continuation without a stop id (None for the model itself: the plain reference is that)."""
    if config["drafter"] == "model":
        return model, None
    oracle = DraftOracle(model, "oracle")
    continuation = space.decode(oracle, prompt, "ar", max_new_tokens=config["max_new_tokens"], eos_token_id=[],
                                use_cache=config["use_cache"]).tokens  # the oracle's AR does not read its reference
    sequence = torch.cat([prompt[0], continuation])
    if config["drafter"] == "mixed":
        generator = torch.Generator().manual_seed(config["prompt_seed"])
        hit = torch.rand(sequence.numel(), generator=generator) < 0.3
        hit[: prompt.shape[1]] = False
        sequence[hit] = (sequence[hit] + 1) % model.config.mask_id
    oracle.set_reference(sequence)
    return oracle, continuation


def check_config(config: dict) -> list[str]:
    """The methods whose output differs from AR's, with what each produced."""
    model, prompt = build(config)
    plain = reference_and_options(model, prompt, config)
    drafter, continuation = drafting_model(model, prompt, config)
    drafted = plain if drafter is model else reference_and_options(drafter, prompt, config, continuation)
    failures = []
    for method in METHODS:
        target, (reference, common) = (drafter, drafted) if method in ("space", "sdsat") else (model, plain)
        options = dict(common, **method_options(config, method))
        try:
            result = space.decode(target, prompt, method, **options)
        except Exception as error:  # noqa: BLE001 - a crash is a failed case too, reported with the others
            failures.append(f"{method}: raised {type(error).__name__}: {error}")
            continue
        tokens = result.tokens.tolist()
        if target is not model and config["drafter"] == "oracle" and len(reference) >= 4 \
                and sum(result.stats.accepted_per_step) == 0:  # the oracle's drafts must be accepted
            failures.append(f"{method}: accepted none of the oracle's drafts")
        if tokens != reference.tolist():
            first = next((i for i, (a, b) in enumerate(zip(tokens, reference.tolist())) if a != b),
                         min(len(tokens), len(reference)))
            failures.append(f"{method}: differs from ar at token {first}: {tokens} vs {reference.tolist()}")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: f"case-{config['index']:04d}-{config['architecture']}")
def test_every_lossless_method_equals_ar(config):
    failures = check_config(config)
    assert not failures, (
        f"fuzz case {config['index']} (rerun: pytest tests/test_identity_fuzz.py -m slow -k case-{config['index']:04d})"
        f"\nconfig: {config}\n" + "\n".join(failures)
    )


def test_there_are_at_least_1000_identity_cases():
    assert NUM_CONFIGS * len(METHODS) >= 1000
    assert set(METHODS) == set(space.DECODERS) - {"ar"}  # every lossless method
    assert {config["architecture"] for config in CONFIGS} == set(ARCHITECTURES)
    assert {config["k"] for config in CONFIGS} == set(range(1, 7))
    assert {config["num_layers"] for config in CONFIGS} == {1, 2, 3}
    assert {config["drafter"] for config in CONFIGS} == {"model", "oracle", "mixed"}
    for key in ("use_cache", "mask_diff", "eos_inside", "eos_as_list", "repetitive_prompt", "tie_word_embeddings"):
        assert {config[key] for config in CONFIGS} == {True, False}, key
    assert any(config["num_kv_heads"] == config["num_heads"] for config in CONFIGS)  # MHA
    assert any(config["num_kv_heads"] < config["num_heads"] for config in CONFIGS)  # GQA
    # every (architecture, k, cache) combination occurs
    combos = {(config["architecture"], config["k"], config["use_cache"]) for config in CONFIGS}
    assert len(combos) == len(ARCHITECTURES) * 6 * 2


def test_configs_are_reproducible_one_by_one():
    assert [make_config(index) for index in (0, 57, NUM_CONFIGS - 1)] == [CONFIGS[0], CONFIGS[57], CONFIGS[-1]]
