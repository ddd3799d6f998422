"""Sampler head (`space.adapters.sampler_head`): each draft conditioned on the token before it; every decoder stays
exact.

On tiny random models in fp32: SPACE (chain and tree, with and without the KV cache) with a random head equals AR
token for token, on plain and gated models; the first slot is conditioned on the last committed token and each
later slot on the draft before it; exact sampling with a head still reproduces the model's distribution (and the
test catches drafts scored against the wrong distribution); training learns a dependence on the previous token;
the report's accepted-tokens figure is the chain's; the script adds a head that `space.load_model` attaches."""

import json
import random

import pytest
import torch

import space
import space.decoding.tree as tree_decoder
from space.adapters.sampler_head import HEAD_WEIGHTS, SamplerHead, SamplerHeadConfig, attach, attached, save_head
from space.adapters.sampler_head_training import HeadTraining, MaskRows, measure, train_head
from space.decoding.common import Model
from space.errors import SpaceError
from space.testing import chi_square_p_value, exact_joint, tiny_llama
from space.training.distill_prompts import GROUPS
from space.training.export import ExportArguments, export_adapter
from space.training.sampler_head import SamplerHeadArguments, run_sampler_head
from tests.test_gated import base_and_gated, fast, trained  # noqa: F401  (trained: a module fixture)


def random_head(hidden_size: int, candidates: int = 4, seed: int = 0, scale: float = 0.5) -> SamplerHead:
    """A head whose correction is far from zero (a trained head starts at zero and moves)."""
    head = SamplerHead(hidden_size, SamplerHeadConfig(inner=16, candidates=candidates))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return head.eval().requires_grad_(False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("use_cache", [True, False])
def test_space_with_a_sampler_head_is_ar_output(seed, tree, use_cache):
    model = tiny_llama(seed=seed, mask_num=2 + seed % 3, mask_diff=seed % 2 == 0)
    prompt = torch.randint(3, 80, (1, 5 + seed), generator=torch.Generator().manual_seed(seed))
    expected = space.decode(model, prompt, "ar", max_new_tokens=32).tokens.tolist()
    attach(model, random_head(model.config.hidden_size, candidates=2 + seed, seed=seed))
    result = space.decode(model, prompt, "space", max_new_tokens=32, tree=tree, use_cache=use_cache)
    assert result.tokens.tolist() == expected


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tree", [False, True])
def test_a_gated_model_with_a_head_decodes_as_its_base(seed, tree):
    base, gated, _ = base_and_gated(seed=seed, mask_num=3)
    if seed % 2:
        fast(base, gated)
    attach(gated, random_head(gated.config.hidden_size, seed=seed))
    prompt = torch.randint(3, 80, (1, 6), generator=torch.Generator().manual_seed(seed))
    expected = space.decode(base, prompt, "ar", max_new_tokens=32).tokens.tolist()
    assert space.decode(gated, prompt, "space", max_new_tokens=32, tree=tree).tokens.tolist() == expected


def test_each_slot_is_conditioned_on_the_token_picked_before_it():
    model = tiny_llama(seed=1, mask_num=3)
    head = random_head(model.config.hidden_size, candidates=5, seed=1)
    attach(model, head)
    seen = []
    forward = head.forward
    head.forward = lambda hidden, previous: seen.append(previous.clone()) or forward(hidden, previous)
    target = Model(model)
    generator = torch.Generator().manual_seed(0)
    hidden_rows = torch.randn(3, model.config.hidden_size, generator=generator)
    plain = target.logits(hidden_rows)
    refined, tokens = target.chain_drafts(hidden_rows, plain, 7, lambda row: int(row.argmax()))
    embed = model.get_input_embeddings().weight
    assert [torch.equal(got, embed[token]) for got, token in zip(seen, [7, *tokens[:-1]])] == [True] * 3
    floor = torch.finfo(refined.dtype).min
    for slot, token in enumerate(tokens):
        ranked = refined[slot] > floor
        assert int(ranked.sum()) == 5 and \
            set(ranked.nonzero()[:, 0].tolist()) == set(plain[slot].topk(5).indices.tolist())
        assert token == int(refined[slot].argmax())
    assert tokens != plain.argmax(-1).tolist()  # this head overrules the plain masks somewhere


@pytest.mark.parametrize("tree", [False, True])
def test_the_first_slot_is_conditioned_on_the_last_committed_token(tree, monkeypatch):
    model = tiny_llama(seed=2, mask_num=3)
    head = random_head(model.config.hidden_size, seed=2)
    attach(model, head)
    calls, sources = [], []
    refine = head.refine_chain
    head.refine_chain = lambda rows, logits, previous, *rest: calls.append(previous) or refine(rows, logits, previous,
                                                                                              *rest)
    source_of = tree_decoder.next_chain_source
    monkeypatch.setattr(tree_decoder, "next_chain_source", lambda *a: sources.append(source_of(*a)) or sources[-1])
    prompt = torch.tensor([[1, 5, 6, 7, 8]])
    result = space.decode(model, prompt, "space", max_new_tokens=24, tree=tree, copy_tokens=0, eos_token_id=[])
    ends = torch.tensor(result.stats.tokens_per_step).cumsum(0).tolist()
    last_committed = [int(result.tokens[end - 1]) for end in ends[:-1]]
    assert calls and calls == last_committed[: len(calls)]
    if tree:  # including chains drafted from an ancestor's group, past its first slot
        assert any(source is not None and source[1] > 0 for source in sources)
    else:  # the chain drafts after every step
        assert len(calls) == len(ends) - 1


def test_a_zero_initialized_head_changes_no_draft():
    model = tiny_llama(seed=3, mask_num=3)
    prompt = torch.tensor([[1, 9, 10, 11]])
    plain = space.decode(model, prompt, "space", max_new_tokens=24, tree=False, eos_token_id=[])
    attach(model, SamplerHead(model.config.hidden_size, SamplerHeadConfig(inner=8, candidates=4)))
    with_head = space.decode(model, prompt, "space", max_new_tokens=24, tree=False, eos_token_id=[])
    assert with_head.stats.accepted_per_step == plain.stats.accepted_per_step
    hidden_rows = torch.randn(64, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    target = Model(model)
    logits = target.logits(hidden_rows)
    _, tokens = target.chain_drafts(hidden_rows, logits, 5, lambda row: int(row.argmax()))
    assert tokens == logits.argmax(-1).tolist()  # every draft is the plain masks' own


def test_the_option_turns_the_head_off():
    model = tiny_llama(seed=4, mask_num=3)
    prompt = torch.tensor([[1, 9, 10, 11]])
    plain = space.decode(model, prompt, "space", max_new_tokens=32, tree=False, eos_token_id=[])
    attach(model, random_head(model.config.hidden_size, seed=4, scale=2.0))
    assert attached(model) is not None
    off = space.decode(model, prompt, "space", max_new_tokens=32, tree=False, eos_token_id=[], sampler_head=False)
    on = space.decode(model, prompt, "space", max_new_tokens=32, tree=False, eos_token_id=[])
    assert off.stats.accepted_per_step == plain.stats.accepted_per_step
    assert on.stats.accepted_per_step != plain.stats.accepted_per_step


# --- exact sampling with a head ----------------------------------------------------------------

VOCAB, K, LENGTH, DRAWS = 12, 2, 3, 1500
PROMPT = torch.tensor([[4, 7, 5]])


def sampled_counts(model, **options) -> dict:
    counts = {}
    for seed in range(DRAWS):
        result = space.decode(model, PROMPT, "space", max_new_tokens=LENGTH, eos_token_id=[], do_sample=True,
                              seed=seed, copy_tokens=0, **options)
        key = tuple(result.tokens.tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


def headed_model():
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, mask_num=K)
    attach(model, random_head(32, candidates=4, seed=5, scale=1.0))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("tree", [False, True])
def test_exact_sampling_with_a_head_reproduces_the_model_distribution(tree):
    model = headed_model()
    truth = exact_joint(model, PROMPT, LENGTH)
    assert chi_square_p_value(truth, sampled_counts(model, tree=tree), DRAWS) > 1e-4


@pytest.mark.slow
def test_the_distribution_test_catches_drafts_scored_against_the_plain_masks(monkeypatch):
    """The head's tokens checked against the plain mask distribution (as if the head were not there): biased."""
    model = headed_model()
    truth = exact_joint(model, PROMPT, LENGTH)
    plain = Model.chain_drafts

    def drafts_with_the_plain_distribution(self, hidden_rows, logits, previous_token, pick):
        _, tokens = plain(self, hidden_rows, logits, previous_token, pick)
        return logits, tokens

    monkeypatch.setattr(Model, "chain_drafts", drafts_with_the_plain_distribution)
    assert chi_square_p_value(truth, sampled_counts(model, tree=False), DRAWS) < 1e-8


# --- training and measuring --------------------------------------------------------------------

def synthetic_rows(count: int, vocab: int, hidden: int, seed: int) -> tuple[MaskRows, torch.Tensor]:
    """Mask rows whose hidden state is noise and whose target is a fixed function of the previous token: only a
    head that reads the previous token can predict it."""
    generator = torch.Generator().manual_seed(seed)
    previous = torch.randint(0, vocab, (count,), generator=generator)
    target = (previous * 5 + 3) % vocab
    rows = MaskRows(hidden=torch.randn(count, hidden, generator=generator).to(torch.bfloat16), previous=previous,
                    target=target, offset=torch.arange(count) % 3 + 1, block=torch.arange(count) // 3,
                    group=torch.zeros(count, dtype=torch.long))
    weight = torch.randn(vocab, hidden, generator=generator)
    return rows, weight


def test_training_learns_the_dependence_on_the_previous_token():
    rows, weight = synthetic_rows(6000, vocab=24, hidden=32, seed=0)
    settings = HeadTraining(inner=64, candidates=24, epochs=8, batch_size=256, learning_rate=3e-3)
    head = train_head(rows, weight, weight, settings, progress=False)
    report = {row["drafter"]: row for row in measure(rows, weight, weight, head, candidates=24, width=3, groups=GROUPS)}
    assert report["masks"]["offset 1"] < 0.2  # noise alone predicts nothing
    assert report["masks + sampler head"]["offset 1"] > 0.9
    assert settings.history[-1]["loss"] < settings.history[0]["loss"]


def test_the_accepted_figure_is_the_chains_mean_accepted_prefix():
    # identity lm_head over 4 tokens; each row's hidden is the one-hot of the token the masks predict
    weight = torch.eye(4)
    guesses = [[1, 2, 0], [1, 0, 3], [0, 2, 3], [1, 2, 3]]  # right when equal to the targets below
    hidden = torch.nn.functional.one_hot(torch.tensor(guesses).flatten(), 4).to(torch.bfloat16)
    rows = MaskRows(hidden=hidden, previous=torch.zeros(12, dtype=torch.long), target=torch.tensor([1, 2, 3] * 4),
                    offset=torch.tensor([1, 2, 3] * 4), block=torch.arange(12) // 3,
                    group=torch.tensor([0] * 9 + [1] * 3))
    report = {row["group"]: row for row in measure(rows, weight, weight, None, candidates=4, width=3, groups=GROUPS)}
    assert report["code"]["accepted"] == pytest.approx((2 + 1 + 0) / 3, abs=1e-3)  # prefixes right: 2, 1, 0
    assert report["code"]["offset 3"] == pytest.approx(2 / 3, abs=1e-3)
    assert [report["code"][f"reach {j}"] for j in (1, 2, 3)] == pytest.approx([2 / 3, 1 / 3, 0], abs=1e-3)
    assert report["general"]["accepted"] == 3 and report["general"]["blocks"] == 1


# --- the script and loading --------------------------------------------------------------------

def write_answers(path, count: int, seed: int):
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for index in range(count):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            family = "stdlib" if index % 2 else "explain"
            handle.write(json.dumps({"id": f"{family}/{index}", "instruction": f"Add {a} and {b}.", "input": "",
                                     "output": f"The sum of {a} and {b} is {a + b}. def add(a, b): return a + b"})
                         + "\n")
    return path


def test_the_script_adds_a_head_that_loads_without_flags(trained, tmp_path, monkeypatch):  # noqa: F811
    args = SamplerHeadArguments(model=str(trained.output), train_data=str(write_answers(tmp_path / "t.jsonl", 24, 0)),
                                held_out=str(write_answers(tmp_path / "h.jsonl", 6, 1)),
                                output_dir=str(tmp_path / "headed"), work_dir=str(tmp_path / "rows"), blocks=4,
                                cutoff_len=128, inner=16, candidates=8, epochs=2, batch_size=64)
    report = run_sampler_head(args)
    assert {row["drafter"] for row in report["rows"]} == {"masks", "masks + sampler head"}
    assert {row["group"] for row in report["rows"]} == {"code", "general"}
    output = tmp_path / "headed"
    assert len(list((tmp_path / "rows").glob("mask_rows_*.pt"))) == 2 and not list(output.glob("mask_rows_*"))
    fields = json.loads((output / "space.json").read_text())
    assert fields["sampler_head"] == {"inner": 16, "candidates": 8} and fields["adapter"] == "gated_lora"
    model, _ = space.load_model(output)
    head = attached(model)
    assert head is not None and head.config.candidates == 8
    assert not any("sampler" in name or name.startswith(("up.", "down.")) for name in model.state_dict())
    base, _ = space.load_model(trained.work["base"])
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=16).tokens.tolist() == \
        space.decode(base, prompt, "ar", max_new_tokens=16).tokens.tolist()
    # a rerun reuses the kept mask rows: no forward of the model
    monkeypatch.setattr("space.training.sampler_head.collect_mask_rows",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("rows collected again")))
    run_sampler_head(args)
    # an export carries the head with its adapter; exporting a plain adapter over it removes the stale head
    exported = export_adapter(ExportArguments(adapter_dir=str(output), output=str(tmp_path / "export"),
                                              dtype="float32", base_model=str(trained.work["base"])))
    assert (exported.path / HEAD_WEIGHTS).is_file()
    again, _ = space.load_model(exported.path)
    assert torch.equal(attached(again).up.weight, head.up.weight)
    export_adapter(ExportArguments(adapter_dir=str(trained.output), output=str(tmp_path / "export"), dtype="float32",
                                   base_model=str(trained.work["base"])))
    assert not (exported.path / HEAD_WEIGHTS).exists() and attached(space.load_model(exported.path)[0]) is None


def test_a_head_without_its_weights_or_with_bad_settings_gets_one_line(trained, tmp_path):  # noqa: F811
    import shutil

    directory = tmp_path / "adapter"
    shutil.copytree(trained.output, directory, ignore=shutil.ignore_patterns("checkpoint-*"))
    fields = json.loads((directory / "space.json").read_text())
    (directory / "space.json").write_text(json.dumps(dict(fields, sampler_head={"inner": 8, "candidates": 4})))
    with pytest.raises(SpaceError, match=f"{HEAD_WEIGHTS} is missing"):
        space.load_model(directory)
    (directory / "space.json").write_text(json.dumps(dict(fields, sampler_head={"inner": 8, "candidates": 0})))
    with pytest.raises(SpaceError, match="sampler_head.candidates must be a positive integer"):
        space.load_model(directory)
    with pytest.raises(SpaceError, match="--output_dir must differ from --model"):
        run_sampler_head(SamplerHeadArguments(model=str(directory), train_data=str(write_answers(tmp_path / "t.jsonl",
                         2, 0)), held_out=str(tmp_path / "t.jsonl"), output_dir=str(directory)))


def test_a_lora_adapter_carries_its_head_merged_or_not(tmp_path):
    from space.testing import tiny_sft_base, tiny_sft_data, tiny_sft_flags
    from space.training import train

    base = tiny_sft_base(tmp_path / "base", tie=True)
    output = tmp_path / "lora"
    train(tiny_sft_flags(base, tiny_sft_data(tmp_path / "data.json", count=8), output, "--max_steps", "2",
                         "--finetuning_type", "lora", "--lora_rank", "4"))
    plain, _ = space.load_model(output)
    head = random_head(plain.config.hidden_size, seed=6)
    save_head(head, output)
    fields = json.loads((output / "space.json").read_text())
    (output / "space.json").write_text(json.dumps(dict(fields, sampler_head=head.config.to_json())))
    prompt = torch.tensor([[1, 50, 60, 70]])
    expected = space.decode(plain, prompt, "ar", max_new_tokens=16).tokens.tolist()
    for merge in (True, False):
        model, _ = space.load_model(output, merge_adapter=merge)
        assert Model(model).sampler_head is not None, merge
        assert space.decode(model, prompt, "space", max_new_tokens=16).tokens.tolist() == expected
    (output / "space.json").write_text(json.dumps(dict(fields, sampler_head=None)))
    assert Model(space.load_model(output)[0]).sampler_head is None  # null: no head
    (output / "space.json").write_text(json.dumps(dict(fields, sampler_head={"inner": 16, "width": 3})))
    with pytest.raises(SpaceError, match=r"sampler_head has unknown settings \['width'\]"):
        space.load_model(output)
