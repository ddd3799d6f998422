"""Batched decoding (`space.decode_batch`): every row is exactly its own batch-1 output.

Greedy identity over random tiny models (LLaMA, Mistral with a sliding window, Qwen2), batches of 2, 3 and 5
with ragged prompt lengths, a one-token prompt and a duplicate, the cache on and off, drafts from the model, an
oracle or a partly corrupted oracle (so rows accept different counts each step), an EOS that AR emits inside
the budget (rows end at different steps, inside accepted drafts or copies) and a context short enough that rows'
budgets differ. Each row's KV entries equal a fresh prefill of its committed tokens after every step. Sampling:
each row follows the model's distribution (slow suite), and the paper's rule, which does not, is caught.
"""

import random

import pytest
import torch

import space
from space.cache import CompactCache
from space.decoding.common import Model
from space.decoding.drafts import Drafts
from space.decoding.tree_shape import AcceptanceRates, ShapeConfig, plan_batch, plan_steps
from space.testing import DraftOracle, chi_square_p_value, exact_joint, tiny_llama
from tests.conftest import capture_caches

pytestmark = pytest.mark.filterwarnings("ignore::space.SpaceWarning")  # the short contexts cut budgets, as meant

CASES = 24
METHODS = {"ar": {}, "tree": {}, "chain": dict(tree=False)}


def make_case(index: int) -> dict:
    rng = random.Random(f"batch-{index}")
    return dict(
        index=index,
        architecture=("llama", "mistral", "qwen2")[index % 3],
        batch=(2, 3, 5)[index % 3 if index < 3 else rng.randrange(3)],
        k=rng.randint(1, 4),
        use_cache=index % 2 == 0,
        drafter=("model", "oracle", "mixed")[(index // 2) % 3],
        eos_inside=rng.random() < 0.6,
        short_context=rng.random() < 0.25,
        max_new_tokens=rng.randint(8, 24),
        seed=rng.randrange(2**31),
    )


def build(case: dict):
    """The model, its prompts (ragged, one of one token, one duplicate, half from a small alphabet so copies
    match) and the AR reference of each."""
    rng = random.Random(case["seed"])
    options = dict(seed=case["index"], vocab_size=64, hidden_size=32, num_heads=4, num_kv_heads=2,
                   mask_num=case["k"], architecture=case["architecture"])
    if case["architecture"] == "mistral":
        options["sliding_window"] = 6  # shorter than most sequences: the window matters
    if case["short_context"]:
        options["max_position_embeddings"] = 20  # rows' budgets are cut to different lengths
    inner = tiny_llama(**options)
    prompts = []
    for i in range(case["batch"]):
        length = 1 if i == 0 else rng.randint(2, 12)
        alphabet = rng.sample(range(3, 60), 4) if rng.random() < 0.5 else list(range(3, 60))
        prompts.append(torch.tensor([rng.choice(alphabet) for _ in range(length)]))
    if case["batch"] > 2:
        prompts[-1] = prompts[1].clone()  # the same prompt twice
    model = inner
    if case["drafter"] != "model":
        model = DraftOracle(inner, "oracle")
        references = []
        for prompt in prompts:
            continuation = space.decode(model, prompt[None], "ar", max_new_tokens=40, eos_token_id=[]).tokens
            sequence = torch.cat([prompt, continuation])
            if case["drafter"] == "mixed":
                hit = torch.rand(sequence.numel(), generator=torch.Generator().manual_seed(case["seed"])) < 0.3
                hit[: prompt.numel()] = False
                sequence[hit] = (sequence[hit] + 1) % inner.config.mask_id
            references.append(sequence)
        model.set_references(references)
    eos = []
    if case["eos_inside"]:
        first = space.decode(model, prompts[-1][None], "ar", max_new_tokens=case["max_new_tokens"], eos_token_id=[])
        eos = [int(first.tokens[rng.randrange(first.tokens.numel())])]
    return model, prompts, eos


@pytest.mark.parametrize("case", [make_case(i) for i in range(CASES)], ids=lambda c: f"case-{c['index']:02d}")
def test_every_row_is_its_own_batch_1_output(case):
    model, prompts, eos = build(case)
    common = dict(max_new_tokens=case["max_new_tokens"], use_cache=case["use_cache"], eos_token_id=eos)
    ar_alone = [space.decode(model, prompt[None], "ar", **common).tokens.tolist() for prompt in prompts]
    ends = {len(tokens) for tokens in ar_alone}
    for method, extra in METHODS.items():
        name = "ar" if method == "ar" else "space"
        options = dict(common, **extra, **({} if name == "ar" else {"mask_num": case["k"]}))
        batched = space.decode_batch(model, prompts, name, **options)
        alone = [space.decode(model, prompt[None], name, **options) for prompt in prompts]
        for row, (together, single) in enumerate(zip(batched, alone)):
            assert together.tokens.tolist() == single.tokens.tolist() == ar_alone[row], (method, row, case)
            assert together.stats.steps == len(together.stats.tokens_per_step)
            assert sum(together.stats.tokens_per_step) == together.tokens.numel()
    if case["eos_inside"] or case["short_context"]:
        assert ends  # rows of different lengths are what these cases are for; recorded, not required


def test_some_cases_end_rows_at_different_steps_and_accept_several_tokens():
    """The cases above exercise what they are for: rows of one batch ending at different lengths, and steps
    accepting several drafts (compaction that differs per row)."""
    different_ends, multi_accept = 0, 0
    for index in range(CASES):
        case = make_case(index)
        model, prompts, eos = build(case)
        results = space.decode_batch(model, prompts, "space", max_new_tokens=case["max_new_tokens"],
                                     use_cache=case["use_cache"], eos_token_id=eos, mask_num=case["k"])
        different_ends += len({r.tokens.numel() for r in results}) > 1
        multi_accept += any(max(r.stats.accepted_per_step) >= 2 for r in results)
    assert different_ends >= 5 and multi_accept >= 5


@pytest.mark.parametrize("method", ["ar", "space"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_each_rows_cache_is_a_fresh_prefill_after_every_step(monkeypatch, method, batch_size):
    """After every step, row r's entries `[0, length_r)` are those a fresh prefill of its committed tokens gives;
    with two places for four prompts, also after a waiting prompt takes a finished row's place."""
    inner = tiny_llama(seed=11, vocab_size=64, hidden_size=32, mask_num=3)
    prompts = [torch.tensor([5, 9, 11, 5, 9]), torch.tensor([7]), torch.tensor([3, 4, 5, 6, 3, 4, 5, 6, 3]),
               torch.tensor([8, 8, 2])]
    model = DraftOracle(inner, "oracle")
    model.set_references([torch.cat([p, space.decode(model, p[None], "ar", max_new_tokens=30, eos_token_id=[]).tokens])
                          for p in prompts])
    caches = capture_caches(monkeypatch)
    places = len(prompts) if batch_size is None else batch_size
    snapshots, order, admitted = [], [list(range(places))], [places]
    compact_rows, set_lengths, keep_rows, replace_row = (CompactCache.compact_rows, CompactCache.set_row_lengths,
                                                         CompactCache.keep_rows, CompactCache.replace_row)

    def snapshot(cache):
        if cache in caches and cache.layers[0].is_initialized:
            snapshots.append((list(order[-1]), cache.row_lengths,
                              [layer.key_buffer.clone() for layer in cache.layers],
                              [layer.value_buffer.clone() for layer in cache.layers]))

    def recording_compact(cache, keeps):
        compact_rows(cache, keeps)
        snapshot(cache)

    def recording_lengths(cache, lengths):
        set_lengths(cache, lengths)
        snapshot(cache)

    def recording_replace(cache, row, other):
        replace_row(cache, row, other)
        order.append(list(order[-1]))
        order[-1][row] = admitted[0]
        admitted[0] += 1
        snapshot(cache)

    def recording_keep(cache, rows):
        keep_rows(cache, rows)
        order.append([order[-1][i] for i in rows])

    monkeypatch.setattr(CompactCache, "compact_rows", recording_compact)
    monkeypatch.setattr(CompactCache, "keep_rows", recording_keep)
    monkeypatch.setattr(CompactCache, "set_row_lengths", recording_lengths)
    monkeypatch.setattr(CompactCache, "replace_row", recording_replace)
    eos = [int(space.decode(model, prompts[0][None], "ar", max_new_tokens=20, eos_token_id=[]).tokens[9])]
    results = space.decode_batch(model, prompts, method, max_new_tokens=20, eos_token_id=eos, batch_size=batch_size)
    assert admitted[0] == len(prompts)
    assert len({r.tokens.numel() for r in results}) > 1  # rows left the batch at different steps
    finals = [torch.cat([p, r.tokens]) for p, r in zip(prompts, results)]
    assert len(snapshots) >= 5
    for rows, lengths, keys, values in snapshots:
        for slot, (row, length) in enumerate(zip(rows, lengths)):
            if not length:  # a finished row, about to leave or be replaced
                continue
            fresh = CompactCache.for_model(inner, length)
            with torch.no_grad():
                Model(inner).hidden(finals[row][:length], torch.arange(length), cache=fresh)
            for layer, fresh_layer in enumerate(fresh.layers):
                torch.testing.assert_close(keys[layer][slot, :, :length], fresh_layer.key_buffer[0, :, :length],
                                           atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(values[layer][slot, :, :length], fresh_layer.value_buffer[0, :, :length],
                                           atol=1e-5, rtol=1e-5)


def test_rows_with_their_own_budgets_leave_the_batch_and_the_rest_go_on():
    """A context of 20 leaves the prompts 19, 17 and 8 new tokens: rows finish at different steps, the batch
    shrinks, and each row is its batch-1 output."""
    model = tiny_llama(seed=2, vocab_size=64, hidden_size=32, mask_num=2, max_position_embeddings=20)
    prompts = [torch.tensor([4]), torch.tensor([4, 5, 6]), torch.tensor(list(range(5, 17)))]
    with pytest.warns(space.SpaceWarning):
        batched = space.decode_batch(model, prompts, "space", max_new_tokens=30, eos_token_id=[])
    assert [r.tokens.numel() for r in batched] == [19, 17, 8]
    for prompt, result in zip(prompts, batched):
        with pytest.warns(space.SpaceWarning):
            alone = space.decode(model, prompt[None], "ar", max_new_tokens=30, eos_token_id=[])
        assert result.tokens.tolist() == alone.tokens.tolist()


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("tree", [False, True])
def test_a_gated_model_with_a_sampler_head_batches_as_its_base(seed, tree):
    """Gated adapters act on the mask rows of every row of a batch (and never on real rows); the sampler head
    drafts each row's chain from its own rows; on the fast CPU layers every other seed."""
    from space.adapters.sampler_head import attach
    from tests.test_gated import base_and_gated, fast
    from tests.test_sampler_head import random_head

    base, gated, _ = base_and_gated(seed=seed, mask_num=3)
    if seed % 2:
        fast(base, gated)
    attach(gated, random_head(gated.config.hidden_size, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 80, (length,), generator=generator) for length in (6, 1, 9)]
    expected = [space.decode(base, p[None], "ar", max_new_tokens=24).tokens.tolist() for p in prompts]
    batched = space.decode_batch(gated, prompts, "space", max_new_tokens=24, tree=tree)
    assert [r.tokens.tolist() for r in batched] == expected


@pytest.mark.parametrize("method", ["ar", "space"])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_continuous_batching_gives_each_prompt_its_batch_1_output(method, use_cache, batch_size):
    """Seven prompts through at most `batch_size` places: a finished row's place goes to the next prompt
    (prefilled on its own), rows end at different steps (an EOS inside the budget), and each row is its own
    batch-1 output."""
    inner = tiny_llama(seed=8, vocab_size=64, hidden_size=32, mask_num=3, architecture="mistral", sliding_window=7)
    generator = torch.Generator().manual_seed(8)
    prompts = [torch.randint(3, 60, (length,), generator=generator) for length in (5, 1, 12, 3, 8, 2, 9)]
    model = DraftOracle(inner, "oracle")
    model.set_references([torch.cat([p, space.decode(model, p[None], "ar", max_new_tokens=30, eos_token_id=[]).tokens])
                          for p in prompts])
    eos = [int(space.decode(model, prompts[2][None], "ar", max_new_tokens=20, eos_token_id=[]).tokens[6])]
    options = dict(max_new_tokens=20, eos_token_id=eos, use_cache=use_cache)
    alone = [space.decode(model, p[None], "ar", **options).tokens.tolist() for p in prompts]
    assert len({len(tokens) for tokens in alone}) > 1
    batched = space.decode_batch(model, prompts, method, batch_size=batch_size, **options)
    assert [r.tokens.tolist() for r in batched] == alone
    assert [r.stats.steps for r in space.decode_batch(model, prompts, "ar", batch_size=batch_size, **options)] == \
        [len(tokens) for tokens in alone]


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "2"])
def test_a_bad_batch_size_is_one_line(batch_size):
    model = tiny_llama(seed=0, vocab_size=64, hidden_size=32)
    with pytest.raises(space.SpaceError, match="batch_size must be a whole number >= 1 or None"):
        space.decode_batch(model, [torch.tensor([1, 2])], "ar", batch_size=batch_size, max_new_tokens=2)


def test_a_left_padded_tensor_with_its_mask_is_the_list_of_prompts():
    model = tiny_llama(seed=3, vocab_size=64, hidden_size=32, mask_num=3)
    prompts = [torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])]
    padded = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    from_tensor = space.decode_batch(model, padded, "space", attention_mask=attention_mask, max_new_tokens=12)
    from_list = space.decode_batch(model, prompts, "space", max_new_tokens=12)
    assert [r.tokens.tolist() for r in from_tensor] == [r.tokens.tolist() for r in from_list]


def test_rows_sample_from_their_own_generators():
    """Row i draws with seed + i: duplicate prompts get different samples, the same batch and seed the same ones,
    and an AR row reruns alone with its seed (a SPACE row's tree, and so its draws, depend on the batch)."""
    model = tiny_llama(seed=4, vocab_size=64, hidden_size=32, mask_num=3)
    prompt = torch.tensor([5, 9, 11])
    options = dict(max_new_tokens=16, do_sample=True, eos_token_id=[])
    batched = space.decode_batch(model, [prompt] * 4, "space", seed=100, **options)
    assert len({tuple(r.tokens.tolist()) for r in batched}) > 1
    again = space.decode_batch(model, [prompt] * 4, "space", seed=100, **options)
    assert [r.tokens.tolist() for r in batched] == [r.tokens.tolist() for r in again]
    batched_ar = space.decode_batch(model, [prompt] * 4, "ar", seed=100, **options)
    alone = space.decode(model, prompt[None], "ar", seed=102, **options)
    assert alone.tokens.tolist() == batched_ar[2].tokens.tolist()
    assert batched_ar[1].tokens.tolist() != batched_ar[2].tokens.tolist()


def test_a_batch_plans_fewer_candidates_per_sequence_as_it_grows():
    """The price of a step is that of every row of every sequence: the same row, batched with more copies of
    itself, gets a smaller tree; one row is planned as `plan_tree` plans it."""
    rates = AcceptanceRates()
    config = ShapeConfig(k=3, price=lambda n: 1.0 + 0.05 * max(n - 4, 0), max_rows=48)
    chain = Drafts([7, 8, 9], origin="chain")
    runners_up = [Drafts([t], origin="topk", slot=i, rank=1, after=i) for i, t in enumerate([17, 18, 19])]
    copies = [Drafts([21, 22, 23, 24, 25, 26], origin="copy", match=4)]

    def rows_per_sequence(batch: int) -> float:
        plans = [plan_steps(5, chain, runners_up, copies, rates, config) for _ in range(batch)]
        return sum(tree.rows for tree in plan_batch(plans, config.price, config.max_rows)) / batch

    sizes = [rows_per_sequence(batch) for batch in (1, 2, 4, 8, 16)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_carried_acceptance_learns_from_every_row():
    model = tiny_llama(seed=6, vocab_size=64, hidden_size=32, mask_num=3)
    rates = AcceptanceRates()
    prompts = [torch.tensor([5, 9, 11, 5, 9, 11]), torch.tensor([3, 4, 3, 4])]
    results = space.decode_batch(model, prompts, "space", max_new_tokens=10, acceptance=rates, eos_token_id=[])
    offered = sum(entry[1] for entry in rates.counts.values())
    alone = [AcceptanceRates() for _ in prompts]
    for prompt, own in zip(prompts, alone):
        space.decode(model, prompt[None], "space", max_new_tokens=10, acceptance=own, eos_token_id=[])
    assert offered > 0 and all(r.tokens.numel() == 10 for r in results)
    assert offered >= max(sum(entry[1] for entry in own.counts.values()) for own in alone)


@pytest.mark.parametrize("prompts,mask,message", [
    ([], None, "no prompts"),
    ([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], None, "prompt 1 is empty"),
    ([torch.tensor([1.0, 2.0])], None, "prompt 0 must be a 1-D LongTensor"),
    ([[1, 2, 3]], None, "prompt 0 must be a 1-D LongTensor"),
    ("hello", None, "prompts must be a list"),
    (torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1]]), "attention_mask must be a tensor of the prompts' shape"),
    (torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [1, 0]]), "right-padded"),
    (torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [2, 1]]), "0 \\(padding\\) and 1"),
    (torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [0, 0]]), "prompt 1 is empty"),
    ([torch.tensor([1, 2])], torch.tensor([[1, 1]]), "attention_mask goes with a \\[B, n\\] tensor"),
    (torch.tensor([[1.0, 2.0]]), None, "LongTensor"),
    ([torch.tensor([1, 2]), torch.tensor([1, 999])], None, "outside the vocabulary"),
])
def test_bad_batches_are_one_line(prompts, mask, message):
    model = tiny_llama(seed=0, vocab_size=64, hidden_size=32)
    with pytest.raises(space.SpaceError, match=message) as error:
        space.decode_batch(model, prompts, "ar", attention_mask=mask, max_new_tokens=4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["self_spec", "hf", "prompt_lookup", "sdsat"])
def test_methods_that_do_not_batch_refuse_several_prompts_and_take_one(method):
    model = tiny_llama(seed=0, vocab_size=64, hidden_size=32, sat_num=2)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    options = dict(max_new_tokens=4, eos_token_id=[])
    if method == "self_spec":
        options["skip_layers"] = {"attention": [1], "mlp": []}
    with pytest.raises(space.SpaceError, match=r"decodes one prompt at a time; the methods that batch are \['ar', "
                                               r"'space'\] \(or pass batch_size=1\)"):
        space.decode_batch(model, prompts, method, **options)
    alone = [space.decode(model, prompt[None], method, **options).tokens.tolist() for prompt in prompts]
    assert space.decode_batch(model, prompts[:1], method, **options)[0].tokens.tolist() == alone[0]
    assert [r.tokens.tolist() for r in space.decode_batch(model, prompts, method, batch_size=1, **options)] == alone


# --- the distribution test, per row ---------------------------------------------------------------------

VOCAB, K, LENGTH, DRAWS, ROWS = 12, 2, 3, 1500, 6
PROMPTS = [torch.tensor([4, 7, 5]), torch.tensor([9, 3])]


def batched_counts(model, **options) -> list[dict]:
    """Draws per prompt from batches of `ROWS` rows (the prompts alternating)."""
    counts = [{} for _ in PROMPTS]
    rows = [PROMPTS[i % len(PROMPTS)] for i in range(ROWS)]
    for call in range(DRAWS * len(PROMPTS) // ROWS):
        results = space.decode_batch(model, rows, "space", max_new_tokens=LENGTH, eos_token_id=[], do_sample=True,
                                     seed=call * ROWS, **options)
        for i, result in enumerate(results):
            key = tuple(result.tokens.tolist())
            counts[i % len(PROMPTS)][key] = counts[i % len(PROMPTS)].get(key, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_follows_the_model_distribution_and_the_papers_rule_does_not(use_cache):
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, mask_num=K)
    truths = [exact_joint(model, prompt[None], LENGTH) for prompt in PROMPTS]
    exact = batched_counts(model, use_cache=use_cache)
    original = batched_counts(model, use_cache=use_cache, sampling_mode="original")
    for truth, counts, biased in zip(truths, exact, original):
        assert chi_square_p_value(truth, counts, DRAWS) > 1e-4
        assert chi_square_p_value(truth, biased, DRAWS) < 1e-8
