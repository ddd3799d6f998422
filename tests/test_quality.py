"""`space.eval.quality`: lossless batched answers equal one-prompt AR answers, resume, and refuse bad input."""

import json

import pytest

import space
from space.eval import evaluate
from space.eval.flags import parse_eval_args
from space.eval.quality import METHOD, QualityArgs, evaluate_quality, parse_quality_args
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


@pytest.mark.parametrize("method", [None, "ar"])
def test_batched_answers_equal_the_ar_decoder_and_a_rerun_resumes(tiny_dir, tmp_path, method):
    """Prompts of different lengths, batched (three at once, continuous), each get the AR decoder's greedy answer
    (fp32, tiny model), whether SPACE (the default: the model has masks) or AR answers."""
    summary = quality(tiny_dir, tmp_path / "q", method=method, num_samples=7)
    assert summary["methods"][METHOD]["answers"] == 7 and summary["settings"]["dtype"] == "float32"
    assert summary["settings"]["decoder"] == (method or "space")
    batched = {r["id"]: r["ids"] for r in map(json.loads, (tmp_path / "q" / "samples.jsonl").open())}
    evaluate(parse_eval_args(["--llm_dir", str(tiny_dir), "--dataset", "humaneval-x-python", "--num_samples", "7",
                              "--max_new_tokens", "10", "--methods", "ar", "--pass_at_k", "false", "--warmup", "0",
                              "--output_dir", str(tmp_path / "ar"), "--progress", "false"]))
    reference = {r["id"]: r["ids"] for r in map(json.loads, (tmp_path / "ar" / "samples.jsonl").open())}
    assert batched == reference
    assert "| all | 7 |" in (tmp_path / "q" / "summary.md").read_text()

    before = (tmp_path / "q" / "samples.jsonl").read_text()
    quality(tiny_dir, tmp_path / "q", method=method, num_samples=7)  # every prompt answered: nothing decoded again
    assert (tmp_path / "q" / "samples.jsonl").read_text() == before
    with pytest.raises(space.SpaceError, match="max_new_tokens"):
        quality(tiny_dir, tmp_path / "q", method=method, num_samples=7, max_new_tokens=11)


def test_bad_input_is_one_clear_error(tiny_dir, tmp_path):
    with pytest.raises(space.SpaceError, match="--batch_size must be at least 1"):
        quality(tiny_dir, tmp_path / "a", batch_size=0)
    with pytest.raises(space.SpaceError, match=r"--method must be one of \['ar', 'space'\]"):
        parse_quality_args(["--method", "hf"])
    conversation = tmp_path / "chat.jsonl"
    conversation.write_text(json.dumps({"question_id": 1, "category": "chat", "turns": ["hi", "and?"]}) + "\n")
    with pytest.raises(space.SpaceError, match="single-turn"):
        quality(tiny_dir, tmp_path / "b", dataset="mt-bench", data_path=str(conversation))
