"""A SPACE training sample's mask rows give exactly the logits SPACE drafts from, for the same prefix.

At the end of a step SPACE drafts the next k candidates from mask group `a` (a = accepted candidates),
which saw the committed tokens x_0 .. x_{P-1} (P = every committed token but the step's bonus) and sits
at positions P .. P+k-1; mask j's logits draft x_{P+j+1}. A training block placed after the context
x_<p holds M_1 .. M_{k+1} at positions p .. p+k, and M_j learns x_{p+j}. So with p = P the first k rows
of the block must give the decoder's draft logits, in the truncating mode (one block ending the
sample, 2D padding mask) and in the multi-block mode (private blocks after the whole conversation,
4D mask from the collator), through the trainer's own forward (`SarTrainer.compute_loss`).

The decoder's draft logits are recorded at its drafting step (`space.decoding.tree.draft_chain`). A random model
rejects almost every candidate (group 0 only), so a scripted acceptance rule also forces every group 0 .. k to
draft: the committed tokens are then whatever was accepted, and the group still saw exactly those.
"""

import itertools

import pytest
import torch
from transformers import TrainingArguments

import space
from space.decoding import tree as tree_decoder
from space.decoding import verify
from space.testing import tiny_llama
from space.training.collate import SarCollator
from space.training.samples import MaskingConfig, build_sample
from space.training.trainer import SarTrainer
from tests.conftest import random_prompt
from tests.test_samples import ScriptedRandom

MAX_NEW_TOKENS = 26
FILLER = 7  # response tokens after the decoded text: only labels, never seen by a block


def decode_recording_drafts(monkeypatch, model, prompt, use_cache, decoding):
    """SPACE's output and `(P, draft logits [k, V])` for every draft it made."""
    draws = []
    draft_chain = tree_decoder.draft_chain

    def recording(target, hidden_rows, logits, first_slot, *rest):
        draws.append(logits[first_slot:].clone())
        return draft_chain(target, hidden_rows, logits, first_slot, *rest)

    monkeypatch.setattr(tree_decoder, "draft_chain", recording)
    k = model.config.mask_num
    options = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=[], use_cache=use_cache,
                   tree=False)  # the chain's groups
    if decoding == "scripted":
        script = itertools.cycle([0, k, 1, max(k - 1, 0), 2 % (k + 1)])
        next(script)  # the first step's dummy candidates (mask ids) are never accepted

        def scripted_accept(target_tokens, drafts):
            accepted = 0 if not draws else min(next(script), drafts.numel())
            return accepted, int(target_tokens[accepted])

        monkeypatch.setattr(verify, "greedy_accept", scripted_accept)
    elif decoding == "sampling":
        options.update(do_sample=True, seed=5, top_k=8)
    result = space.decode(model, prompt, "space", **options)
    stats = result.stats
    assert len(draws) == stats.steps - 1  # every step but the last drafts
    ends = itertools.accumulate(stats.tokens_per_step)
    prefixes = [prompt.shape[1] + end - 1 for end in ends][: len(draws)]
    if decoding == "scripted":
        assert set(stats.accepted_per_step[1:-1]) == set(range(k + 1))  # every group drafted
    return torch.cat([prompt[0], result.tokens]), list(zip(prefixes, draws))


def trainer_logits(model, features, tmp_path):
    """Collate like training, then the trainer's forward (4D pattern -> additive mask, use_cache=False)."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no")
    trainer = SarTrainer(model=model, args=args, data_collator=SarCollator(pad_token_id=0),
                         mask_num=model.config.mask_num)
    batch = SarCollator(pad_token_id=0)(features)
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    return batch, outputs.logits


def assert_rows_match(train_rows, draft, where):
    difference = float((train_rows - draft).abs().max())
    assert torch.allclose(train_rows, draft, rtol=1e-5, atol=1e-4), f"{where}: max |difference| {difference}"


SETTINGS = [
    dict(k=k, mask_diff=diff, use_cache=cache, decoding=decoding)
    for k, diff, cache, decoding in itertools.islice(
        itertools.product([1, 3, 4], [False, True], [True, False], ["natural", "scripted", "sampling"]), 0, None, 2
    )
]


# Sliding windows smaller than the decoded text: training must hide the keys decoding hides (space.window).
SETTINGS += [
    dict(k=3, mask_diff=False, use_cache=True, decoding="scripted", architecture="mistral", window=4),
    dict(k=3, mask_diff=True, use_cache=False, decoding="natural", architecture="qwen2", window=5),
    dict(k=4, mask_diff=False, use_cache=True, decoding="scripted", architecture="qwen2", window=3,
         max_window_layers=1),
]


def setting_id(setting):
    return "-".join(f"{key}={value}" for key, value in setting.items())


def decoded(monkeypatch, setting, seed):
    window = dict(architecture=setting["architecture"], sliding_window=setting["window"],
                  max_window_layers=setting.get("max_window_layers", 0)) if "window" in setting else {}
    model = tiny_llama(seed=seed, mask_num=setting["k"], mask_diff=setting["mask_diff"], **window)
    prompt = random_prompt(3 + seed % 5, seed=seed)
    full, drafts = decode_recording_drafts(monkeypatch, model, prompt, setting["use_cache"], setting["decoding"])
    config = dict(mask_num=setting["k"], mask_id=model.config.mask_id, mask_diff=setting["mask_diff"], cutoff_len=512)
    return model, prompt, full, drafts, config


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_truncating_samples_mask_rows_equal_the_draft_rows(monkeypatch, tmp_path, setting):
    k = setting["k"]
    model, prompt, full, drafts, config = decoded(monkeypatch, setting, 60 + SETTINGS.index(setting))
    source, target = prompt[0].tolist(), full[prompt.shape[1]:].tolist() + [3] * FILLER
    features = [
        build_sample([(source, target)], MaskingConfig(**config), ScriptedRandom(randints=[p - len(source)]))
        for p, _ in drafts
    ]
    for (p, _), feature in zip(drafts, features):  # the block follows exactly the decoder's committed prefix
        assert feature["input_ids"][:p] == full[:p].tolist() and feature["mask_offsets"][p:] == list(range(1, k + 2))
    batch, logits = trainer_logits(model, features, tmp_path)  # one right-padded batch of every sample
    assert "attention_mask_4d" not in batch
    for row, (p, draft) in enumerate(drafts):
        assert_rows_match(logits[row, p : p + k], draft, f"sample {row}, prefix {p}")


@pytest.mark.parametrize("random_sizes", [False, True], ids=["full-blocks", "mask_random"])
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_multi_block_samples_mask_rows_equal_the_draft_rows(monkeypatch, tmp_path, setting, random_sizes):
    """Every draft becomes a private block; the blocks are split over two samples of different lengths."""
    k = setting["k"]
    model, prompt, full, drafts, config = decoded(monkeypatch, setting, 60 + SETTINGS.index(setting))
    source = prompt[0].tolist()
    features, checks = [], []
    for part, extra in [(drafts[0::2], 0), (drafts[1::2], 5)]:  # different lengths: padding in the batch
        sizes = [1 + (i * 7 + k) % k for i in range(len(part))] if random_sizes else [k] * len(part)
        masking = MaskingConfig(**config, efficient=True, mask_blocks=len(part), mask_random=random_sizes)
        target = full[prompt.shape[1]:].tolist() + [3] * (FILLER + extra)
        rng = ScriptedRandom(randints=list(sizes), samples=[p for p, _ in part])
        feature = build_sample([(source, target)], masking, rng)
        features.append(feature)
        checks.append([(p, draft[:size]) for (p, draft), size in zip(part, sizes)])
    batch, logits = trainer_logits(model, features, tmp_path)
    assert "attention_mask_4d" in batch
    compared = 0
    for row, (feature, part) in enumerate(zip(features, checks)):
        segments = torch.tensor(feature["segment_ids"])
        assert int(segments.max()) == len(part)  # one block per draft, none dropped
        for block, (p, draft) in enumerate(part, start=1):
            rows = (segments == block).nonzero().flatten()
            assert feature["position_ids"][rows[0]] == p and len(rows) == draft.shape[0] + 1
            assert_rows_match(logits[row, rows[:-1]], draft, f"sample {row}, block {block}, prefix {p}")
            compared += 1
    assert compared == len(drafts) >= 5


def test_the_settings_cover_every_option():
    assert len(SETTINGS) >= 15
    for key, values in [("k", {1, 3, 4}), ("mask_diff", {False, True}), ("use_cache", {True, False}),
                        ("decoding", {"natural", "scripted", "sampling"})]:
        assert {setting[key] for setting in SETTINGS} == values, key
