"""The default-model recipe end to end on a tiny model, and the shipped SmolLM2 SPACE model itself."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import space
from space.adapters.gated import GATED_KIND, GATED_WEIGHTS
from space.decoding.common import eos_ids
from space.eval.datasets import load_eval_dataset
from space.models import has_shipped_model
from space.testing import tiny_llama, tiny_text_tokenizer
from space.training import default_model
from space.training.default_model import DECODE_MASK_NUM_CUDA, make_default_model, parse_default_model_args

ROOT = Path(__file__).resolve().parents[1]


def recipe_argv(tmp_path, base, *extra):
    return ["--model", str(base), "--limit", "6", "--max_new_tokens", "12", "--batch_size", "3", "--max_steps", "3",
            "--work_dir", str(tmp_path / "work"), "--export_dir", str(tmp_path / "export"), "--decode_mask_num", "2",
            "--train_args", "--save_steps 2 --logging_steps 1", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "base"
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=1, vocab_size=len(tokenizer), init_std=0.02)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, base):
    """One finished recipe run (the folder holding `work` and `export`), for tests that copy it."""
    root = tmp_path_factory.mktemp("finished")
    make_default_model(parse_default_model_args(recipe_argv(root, base)))
    return root


def test_recipe_runs_end_to_end_on_a_tiny_model(tmp_path, base, finished):
    base_model, _ = space.load_model(base)
    exported = finished / "export"
    # a gated adapter (space.adapters.gated)
    assert {p.name for p in exported.iterdir()} == {GATED_WEIGHTS, "space.json"}
    log = json.loads((finished / "work" / "recipe_log.json").read_text())
    assert set(log) == {"settings", "distill", "train", "export"}
    assert all(log[step]["finished"] for step in ("distill", "train", "export"))
    assert len(json.loads((exported / "space.json").read_text())["gated"]["targets"]) > 1
    shutil.copytree(finished / "work", tmp_path / "work")
    data = tmp_path / "work" / "distill.jsonl"
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(records) == 6
    stops = set(eos_ids(base_model, base_model.generation_config.eos_token_id))
    assert all(r["unfinished"] == (r["output_ids"][-1] not in stops) for r in records)
    assert any(r["unfinished"] for r in records)  # 12 tokens cut most answers off
    # rerunning resumes: nothing is generated again, an older file gains the unfinished marks, and
    # the finished training is not redone
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "unfinished"}) + "\n" for r in records))
    exported = make_default_model(parse_default_model_args(recipe_argv(tmp_path, base)))
    assert [json.loads(line) for line in data.read_text().splitlines()] == records
    assert json.loads((tmp_path / "work" / "recipe_log.json").read_text())["train"] == log["train"]  # not redone

    model, _ = space.load_model(base, adapter=exported)
    spec = space.read_mask_spec(model.config)
    assert spec.mask_diff and spec.mask_num == 2  # decodes with the recorded k; trained with the config's 6
    saved = json.loads((exported / "space.json").read_text())
    assert space.models.decode_mask_num(saved, "cuda") == DECODE_MASK_NUM_CUDA
    prompt = torch.tensor([[1, 40, 50, 60]])
    reference = space.decode(base_model, prompt, "ar", max_new_tokens=12).tokens.tolist()  # the *base* model's
    for k in (None, 6):
        assert space.decode(model, prompt, "space", max_new_tokens=12, mask_num=k).tokens.tolist() == reference


def test_the_lora_recipe_of_the_earlier_default_still_runs(tmp_path, base):
    exported = make_default_model(parse_default_model_args(recipe_argv(
        tmp_path, base, "--config", str(ROOT / "space" / "configs" / "default_model" / "lora.yaml"),
        "--families", "coding")))
    assert {p.name for p in exported.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "space.json"}
    modules = json.loads((exported / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1
    model, _ = space.load_model(base, adapter=exported)
    prompt = torch.tensor([[1, 40, 50, 60]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_an_interrupted_step_keeps_its_time_and_the_rerun_adds_to_it(tmp_path, base, finished, monkeypatch, stop):
    shutil.copytree(finished / "work", tmp_path / "work")
    log_path = tmp_path / "work" / "recipe_log.json"
    log = json.loads(log_path.read_text())
    del log["train"], log["export"]
    log_path.write_text(json.dumps(log))
    for path in (tmp_path / "work" / "sft").glob("checkpoint-3"):
        shutil.rmtree(path)
    (tmp_path / "work" / "sft" / GATED_WEIGHTS).unlink()

    def interrupted(argv, callbacks=None):
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # a plain kill: turned into KeyboardInterrupt by the recipe
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_default_model(parse_default_model_args(recipe_argv(tmp_path, base)))
    piece = json.loads(log_path.read_text())["train"]
    assert piece["finished"] is False and piece["seconds"] >= 0
    monkeypatch.undo()
    make_default_model(parse_default_model_args(recipe_argv(tmp_path, base)))
    done = json.loads(log_path.read_text())["train"]
    assert done["finished"] and done["seconds"] >= piece["seconds"]
    assert done["command"][-2:] == ["--resume_from_checkpoint", "last"]  # from checkpoint-2


def test_recipe_resume_skips_a_checkpoint_half_written_by_a_kill(tmp_path, base, finished):
    shutil.copytree(finished / "work", tmp_path / "work")
    work = tmp_path / "work"
    # as if killed while saving the last checkpoint: no final adapter, no "train" entry, checkpoint-3 truncated
    log = json.loads((work / "recipe_log.json").read_text())
    del log["train"], log["export"]
    (work / "recipe_log.json").write_text(json.dumps(log))
    for name in (GATED_WEIGHTS, "trainer_state.json"):
        (work / "sft" / name).unlink()
    weights = work / "sft" / "checkpoint-3" / GATED_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    make_default_model(parse_default_model_args(recipe_argv(tmp_path, base)))
    from space.training.checkpoints import checkpoint_problem

    log = json.loads((work / "recipe_log.json").read_text())
    assert log["train"]["command"][-2:] == ["--resume_from_checkpoint", "last"]
    assert checkpoint_problem(work / "sft" / "checkpoint-3") is None  # trained again from checkpoint-2 and saved
    assert json.loads((work / "sft" / "trainer_state.json").read_text())["global_step"] == 3


@pytest.mark.parametrize("extra,message", [
    (["--max_steps", "4"], r"--max_steps 4: .*work was made with --max_steps 3 \(recipe_log.json\); pass the same "
                           "flags to resume it, or another --work_dir to start afresh"),
    (["--max_new_tokens", "16"], "--max_new_tokens 16: .*work was made with --max_new_tokens 12"),
    (["--limit", "5"], "--limit 5: .*work was made with --limit 6"),
    (["--train_args", "--save_steps 1"], "--train_args --save_steps 1: .*was made with --train_args --save_steps 2"),
])
def test_recipe_rerun_with_other_settings_is_refused_before_any_step(tmp_path, base, finished, extra, message):
    shutil.copytree(finished / "work", tmp_path / "work")
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "work").rglob("*")}
    with pytest.raises(space.SpaceError, match=message):
        make_default_model(parse_default_model_args(recipe_argv(tmp_path, base, *extra)))
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "work").rglob("*")} == before


@pytest.mark.parametrize("extra,message", [
    (["--limit", "0"], r"--limit must be at least 1 \(got 0\); leave it out for the default"),
    (["--max_new_tokens", "-1"], r"--max_new_tokens must be at least 1 \(got -1\)"),
    (["--max_steps", "0"], r"--max_steps must be at least 1 \(got 0\)"),
    (["--train_args", "--lora_rank 0"], r"--lora_rank must be a positive integer \(got 0\)"),
])
def test_recipe_bad_flags_are_refused_before_any_step(tmp_path, base, extra, message):
    with pytest.raises(space.SpaceError, match=message):
        make_default_model(parse_default_model_args(recipe_argv(tmp_path, base, *extra)))
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.skipif(not has_shipped_model(), reason="no shipped default model in space/default_model")
def test_shipped_model_decodes_like_ar_on_humaneval_prompts():
    torch.set_num_threads(2)
    model, tokenizer = space.load_model()
    spec = space.read_mask_spec(model.config)
    assert spec is not None
    gated = getattr(model.config, "space_adapter", None) == GATED_KIND
    base = space.load_model("smollm2")[0] if gated else None
    accepted = 0
    for prompt in load_eval_dataset("human_eval", num_samples=3):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.turns[0]}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        reference = space.decode(model, ids, "ar", max_new_tokens=64).tokens
        result = space.decode(model, ids, "space", max_new_tokens=64)
        assert result.tokens.tolist() == reference.tolist()
        if base is not None:  # a gated model's output is the base model's own
            assert space.decode(base, ids, "ar", max_new_tokens=64).tokens.tolist() == reference.tolist()
        accepted += sum(result.stats.accepted_per_step)
    assert accepted > 0  # the shipped masks draft tokens that the model accepts
