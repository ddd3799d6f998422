"""The default-model recipe end to end on a tiny model, and the shipped SmolLM2 SPACE model itself."""

import json

import pytest
import torch

import space
from space.decoding.common import eos_ids
from space.eval.datasets import load_eval_dataset
from space.models import has_shipped_model
from space.testing import tiny_llama, tiny_text_tokenizer
from space.training.default_model import DECODE_MASK_NUM_CUDA, make_default_model, parse_default_model_args


def test_recipe_runs_end_to_end_on_a_tiny_model(tmp_path):
    tokenizer = tiny_text_tokenizer()
    base = tiny_llama(seed=1, vocab_size=len(tokenizer), init_std=0.02)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(base.config, name)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    argv = ["--model", str(tmp_path / "base"), "--limit", "6", "--max_new_tokens", "12", "--batch_size", "3",
            "--max_steps", "3", "--work_dir", str(tmp_path / "work"), "--export_dir", str(tmp_path / "export"),
            "--decode_mask_num", "2", "--train_args", "--save_steps 2 --logging_steps 1"]
    exported = make_default_model(parse_default_model_args(argv))
    assert {p.name for p in exported.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "space.json"}
    log = json.loads((tmp_path / "work" / "recipe_log.json").read_text())
    assert set(log) == {"distill", "train", "export"}
    modules = json.loads((exported / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1
    data = tmp_path / "work" / "distill.jsonl"
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(records) == 6
    stops = set(eos_ids(base, base.generation_config.eos_token_id))
    assert all(r["unfinished"] == (r["output_ids"][-1] not in stops) for r in records)
    assert any(r["unfinished"] for r in records)  # 12 tokens cut most answers off
    # rerunning resumes: nothing is generated again, an older file gains the unfinished marks, and
    # training continues from its checkpoint
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "unfinished"}) + "\n" for r in records))
    make_default_model(parse_default_model_args(argv))
    assert [json.loads(line) for line in data.read_text().splitlines()] == records

    model, _ = space.load_model(tmp_path / "base", adapter=exported)
    spec = space.read_mask_spec(model.config)
    assert spec.mask_diff and spec.mask_num == 2  # decodes with the recorded k; trained with the config's 6
    saved = json.loads((exported / "space.json").read_text())
    assert space.models.decode_mask_num(saved, "cuda") == DECODE_MASK_NUM_CUDA
    prompt = torch.tensor([[1, 40, 50, 60]])
    reference = space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()
    for k in (None, 6):
        assert space.decode(model, prompt, "space", max_new_tokens=12, mask_num=k).tokens.tolist() == reference


@pytest.mark.slow
@pytest.mark.skipif(not has_shipped_model(), reason="no shipped default model in space/default_model")
def test_shipped_model_decodes_like_ar_on_humaneval_prompts():
    torch.set_num_threads(2)
    model, tokenizer = space.load_model()
    spec = space.read_mask_spec(model.config)
    assert spec is not None
    accepted = 0
    for prompt in load_eval_dataset("human_eval", num_samples=3):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.turns[0]}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        reference = space.decode(model, ids, "ar", max_new_tokens=64).tokens
        result = space.decode(model, ids, "space", max_new_tokens=64)
        assert result.tokens.tolist() == reference.tolist()
        accepted += sum(result.stats.accepted_per_step)
    assert accepted > 0  # the shipped masks draft tokens that the model accepts
