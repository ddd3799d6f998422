"""`model.generate(custom_generate=space.CUSTOM_GENERATE)`, `load_model(generate=...)`, and streaming from
`space.decode` (`space.decoding.generation`, `space.decoding.observe`) on tiny random models."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer, pipeline
from transformers.generation import MaxLengthCriteria, RepetitionPenaltyLogitsProcessor

import space
from space.testing import tiny_llama

PROMPT = torch.tensor([[1, 5, 6, 7, 5, 6, 7, 5, 6]])


def space_generate(model, ids, **kwargs):
    return model.generate(ids, custom_generate=space.CUSTOM_GENERATE, trust_remote_code=True, **kwargs)


class Recorder:
    """A streamer that keeps what it is given."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_generate_equals_hf_greedy_and_space_decode(seed):
    model = tiny_llama(seed=seed, vocab_size=100, mask_num=3)
    prompt = torch.randint(3, 90, (1, 7 + seed), generator=torch.Generator().manual_seed(seed))
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)  # HF's own greedy
    decoded = space.decode(model, prompt, "space", max_new_tokens=16).tokens
    assert torch.equal(space_generate(model, prompt, max_new_tokens=16), expected)
    assert torch.equal(expected[0, prompt.shape[1]:], decoded)
    output = space_generate(model, prompt, max_new_tokens=16, return_dict_in_generate=True, k=2)
    assert torch.equal(output.sequences, expected) and output.method == "space"
    assert sum(output.decode_stats[0].tokens_per_step) == 16
    for method in ("ar", "prompt_lookup"):
        assert torch.equal(space_generate(model, prompt, max_new_tokens=16, space_method=method), expected)


def test_a_left_padded_batch_gives_each_row_its_own_output_and_pads_rows_that_end_early():
    model = tiny_llama(seed=4, vocab_size=100, mask_num=3)
    short, long = torch.tensor([3, 9, 27]), torch.tensor([2, 8, 14, 20, 26, 32])
    alone = [space.decode(model, p[None], "space", max_new_tokens=10).tokens for p in (short, long)]
    eos = int(alone[0][4])  # the short prompt's fifth answer token ends its row early
    ends = [space.decode(model, p[None], "space", max_new_tokens=10, eos_token_id=eos).tokens for p in (short, long)]
    ids = torch.tensor([[0, 0, 0, *short.tolist()], long.tolist()])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    out = space_generate(model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=99)
    assert out.shape == (2, 6 + max(len(e) for e in ends))
    for row, answer in zip(out, ends):
        assert row[6:6 + len(answer)].tolist() == answer.tolist()
        assert (row[6 + len(answer):] == 99).all()
    assert torch.equal(out[:, :6], ids)


def test_sampling_arguments_reach_the_decoder_and_the_global_seed_decides(monkeypatch):
    model = tiny_llama(seed=5, vocab_size=100, mask_num=3)
    seen = []
    original = space.decode
    monkeypatch.setattr(space, "decode", lambda m, ids, method, **options: seen.append((method, options))
                        or original(m, ids, method, **options))
    space_generate(model, PROMPT, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, seed=11,
                   tree=False, space_method="space")
    method, options = seen[-1]
    assert method == "space" and options["do_sample"] is True and options["temperature"] == 0.7
    assert options["top_k"] == 5 and options["top_p"] == 0.9 and options["seed"] == 11 and options["tree"] is False
    space_generate(model, PROMPT, max_new_tokens=8, do_sample=True)
    assert seen[-1][1]["top_k"] == 50 and seen[-1][1]["temperature"] == 1.0  # HF's global defaults, as HF samples
    torch.manual_seed(3)
    first = space_generate(model, PROMPT, max_new_tokens=8, do_sample=True)
    torch.manual_seed(3)
    assert torch.equal(space_generate(model, PROMPT, max_new_tokens=8, do_sample=True), first)
    rows = space_generate(model, PROMPT, max_new_tokens=8, do_sample=True, num_return_sequences=3, seed=1)
    assert rows.shape[0] == 3 and torch.equal(rows[:, :PROMPT.shape[1]], PROMPT.expand(3, -1))


@pytest.mark.parametrize("arguments, message", [
    (dict(repetition_penalty=1.3), "cannot apply repetition_penalty=1.3"),
    (dict(num_beams=2), "cannot apply num_beams=2"),
    (dict(output_scores=True), "cannot apply output_scores=True"),
    (dict(no_repeat_ngram_size=2), "cannot apply no_repeat_ngram_size=2"),
    (dict(stop_strings=["x"]), "cannot apply stop_strings"),
    (dict(logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2)])), "logits_processor"),
    (dict(stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(12)])), "stopping_criteria"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(temperatur=0.5), "does not take 'temperatur'"),
    (dict(space_method="beam"), "space_method must be one of"),
    (dict(max_length=5), "max_length 5 leaves no room"),
])
def test_an_option_that_would_change_the_output_is_one_error(arguments, message):
    model = tiny_llama(seed=6, vocab_size=100, mask_num=3)
    arguments.setdefault("max_new_tokens", None if "max_length" in arguments else 6)
    with pytest.raises(space.SpaceError, match=message):
        space_generate(model, PROMPT, **arguments)


def test_settings_without_effect_on_the_output_are_accepted():
    model = tiny_llama(seed=6, vocab_size=100, mask_num=3)
    expected = space_generate(model, PROMPT, max_new_tokens=6)
    same = space_generate(model, PROMPT, max_new_tokens=6, output_scores=False, num_beams=1, length_penalty=2.0,
                          cache_implementation="dynamic", top_k=7)  # top_k: read only when sampling
    assert torch.equal(same, expected)


@pytest.mark.parametrize("method", ["space", "ar", "hf", "prompt_lookup"])
def test_a_streamer_gets_the_prompt_then_each_steps_tokens_in_order(method):
    model = tiny_llama(seed=7, vocab_size=100, mask_num=3)
    recorder, steps = Recorder(), []
    result = space.decode(model, PROMPT, method, max_new_tokens=14, streamer=recorder, on_step=steps.append)
    assert recorder.puts[0] == PROMPT[0].tolist() and recorder.ended == 1
    assert [t for put in recorder.puts[1:] for t in put] == result.tokens.tolist()
    assert [len(put) for put in recorder.puts[1:]] == [n for n in result.stats.tokens_per_step if n]
    assert [s.index for s in steps] == list(range(len(steps))) and [s.tokens for s in steps] == recorder.puts[1:]
    assert all(a.seconds <= b.seconds for a, b in zip(steps, steps[1:])) and steps[0].seconds > 0
    if method == "space":
        assert max(len(put) for put in recorder.puts[1:]) > 1  # multi-token bursts


def test_text_iterator_streamer_reads_the_answer_from_another_thread(eval_model_dir):
    model, tokenizer = space.load_model(eval_model_dir)
    ids = tokenizer("a b c a b c", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    box = {}
    worker = threading.Thread(target=lambda: box.update(out=space_generate(model, ids, max_new_tokens=12,
                                                                           streamer=streamer)))
    worker.start()
    text = "".join(streamer)
    worker.join()
    assert text == tokenizer.decode(box["out"][0, ids.shape[1]:], skip_special_tokens=True)


def test_load_model_can_make_generate_space_for_pipelines(eval_model_dir, monkeypatch):
    import space.decoding.generation as generation

    calls = []
    original = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(k) or original(*a, **k))
    model, tokenizer = space.load_model(eval_model_dir, generate="space")
    plain, _ = space.load_model(eval_model_dir)
    ids = tokenizer("a b c a b c", return_tensors="pt").input_ids
    assert torch.equal(model.generate(ids, max_new_tokens=10),
                       type(plain).generate(plain, ids, max_new_tokens=10, do_sample=False))
    text = pipeline("text-generation", model=model, tokenizer=tokenizer)("a b c a b c", max_new_tokens=10,
                                                                          do_sample=False)
    assert len(calls) == 2 and all(call["space_method"] == "space" for call in calls)  # both went through space
    answer = space.decode(plain, ids, "space", max_new_tokens=10).tokens
    assert text[0]["generated_text"].endswith(tokenizer.decode(answer, skip_special_tokens=True))
    # the `hf` baseline still runs HF's own generate, one token per forward, not the instance's space generate
    assert space.decode(model, ids, "hf", max_new_tokens=6).stats.tokens_per_step == [1] * 6
    with pytest.raises(space.SpaceError, match="generate must be one of"):
        space.load_model(eval_model_dir, generate="beam")


def test_observers_are_checked_and_follow_one_prompt():
    model = tiny_llama(seed=8, vocab_size=100, mask_num=3)
    with pytest.raises(space.SpaceError, match="streamer must have put"):
        space.decode(model, PROMPT, "ar", max_new_tokens=4, streamer=object())
    with pytest.raises(space.SpaceError, match="on_step must be callable"):
        space.decode(model, PROMPT, "ar", max_new_tokens=4, on_step=3)
    with pytest.raises(space.SpaceError, match="follows one prompt"):
        space.decode_batch(model, [PROMPT[0], PROMPT[0, :4]], "ar", max_new_tokens=4, streamer=Recorder())
    with pytest.raises(space.SpaceError, match="follows one sequence"):
        space_generate(model, PROMPT.expand(2, -1), max_new_tokens=4, streamer=Recorder())


@pytest.mark.slow
def test_the_readme_python_api_example_runs_as_written_on_the_embedded_model(capsys):
    """The README's Python API section opens with model.generate(custom_generate=...): run that block verbatim."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "custom_generate=space.CUSTOM_GENERATE" in block.split("space.decode")[0]  # it comes first
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    streamed = capsys.readouterr().out
    generated = scope["out"][0, scope["ids"].shape[1]:]
    assert scope["tokenizer"].decode(generated, skip_special_tokens=True).strip() in streamed
    assert torch.equal(generated, scope["result"].tokens[: generated.numel()])  # the same model, losslessly
