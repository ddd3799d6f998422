"""`space.eval.quality`: batched greedy answers equal one-prompt AR answers, resume, and refuse bad input."""

import json

import pytest
import torch

import space
from space.eval import evaluate
from space.eval.flags import parse_eval_args
from space.eval.quality import METHOD, QualityArgs, cut_at_stop, evaluate_quality, left_pad
from space.testing import tiny_llama, tiny_text_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "model"
    tokenizer = tiny_text_tokenizer()
    tiny_llama(seed=5, vocab_size=len(tokenizer) + 1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def quality(tiny_dir, output, **overrides) -> dict:
    settings = dict(llm_dir=str(tiny_dir), dataset="humaneval-x-python", num_samples=5, max_new_tokens=10,
                    batch_size=3, output_dir=str(output), pass_at_k=False, progress=False)
    return evaluate_quality(QualityArgs(**{**settings, **overrides}))


def test_left_pad_and_the_stop_rule():
    ids, mask = left_pad([torch.tensor([4, 5, 6]), torch.tensor([7])], pad=0)
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_stop([3, 9, 2, 9], stop=[9], max_new_tokens=8) == [3, 9]  # the stop token is kept, as decode does
    assert cut_at_stop([3, 4, 5], stop=[9], max_new_tokens=2) == [3, 4]


def test_batched_answers_equal_the_ar_decoder_and_a_rerun_resumes(tiny_dir, tmp_path):
    """Prompts of different lengths, padded together, each get the AR decoder's greedy answer (fp32, tiny model)."""
    summary = quality(tiny_dir, tmp_path / "q")
    assert summary["methods"][METHOD]["answers"] == 5 and summary["settings"]["dtype"] == "float32"
    batched = {r["id"]: r["ids"] for r in map(json.loads, (tmp_path / "q" / "samples.jsonl").open())}
    evaluate(parse_eval_args(["--llm_dir", str(tiny_dir), "--dataset", "humaneval-x-python", "--num_samples", "5",
                              "--max_new_tokens", "10", "--methods", "ar", "--pass_at_k", "false", "--warmup", "0",
                              "--output_dir", str(tmp_path / "ar"), "--progress", "false"]))
    reference = {r["id"]: r["ids"] for r in map(json.loads, (tmp_path / "ar" / "samples.jsonl").open())}
    assert batched == reference
    assert "| all | 5 |" in (tmp_path / "q" / "summary.md").read_text()

    before = (tmp_path / "q" / "samples.jsonl").read_text()
    quality(tiny_dir, tmp_path / "q")  # every prompt answered: nothing is generated again
    assert (tmp_path / "q" / "samples.jsonl").read_text() == before
    with pytest.raises(space.SpaceError, match="max_new_tokens"):
        quality(tiny_dir, tmp_path / "q", max_new_tokens=11)


def test_bad_input_is_one_clear_error(tiny_dir, tmp_path):
    with pytest.raises(space.SpaceError, match="--batch_size must be at least 1"):
        quality(tiny_dir, tmp_path / "a", batch_size=0)
    conversation = tmp_path / "chat.jsonl"
    conversation.write_text(json.dumps({"question_id": 1, "category": "chat", "turns": ["hi", "and?"]}) + "\n")
    with pytest.raises(space.SpaceError, match="single-turn"):
        quality(tiny_dir, tmp_path / "b", dataset="mt-bench", data_path=str(conversation))
