"""SAR-SFT training end to end on tiny models: in-process runs, LoRA, resume, bad input, the real launcher."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import space
from space.testing import tiny_llama, tiny_text_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import merge_lora  # noqa: E402
import train_sft  # noqa: E402


def make_base(path: Path, tie: bool = False) -> Path:
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), init_std=0.02, tie_word_embeddings=tie)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)  # a plain base: the trainer must add the mask tokens
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_dataset(path: Path, count: int = 32) -> Path:
    rng = random.Random(0)
    records = []
    for _ in range(count):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        records.append({"instruction": f"Add {a} and {b}.", "input": "",
                        "output": f"The sum of {a} and {b} is {a + b}. def add(a, b): return a + b"})
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return dict(base=make_base(root / "base"), tied=make_base(root / "tied", tie=True), data=make_dataset(root / "data.json"),
                root=root)


def args(workdir, output, *extra):
    return ["--stage", "sft", "--do_train", "--model_name_or_path", str(workdir["base"]), "--dataset", str(workdir["data"]),
            "--output_dir", str(output), "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--logging_steps", "4", "--save_strategy", "no", "--mask_num", "3", "--mask_prob", "1.0", "--cutoff_len", "128",
            "--use_cpu", "true", "--report_to", "none", "--seed", "0", *extra]


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("efficient", ["false", "true"])
def test_full_finetuning_learns_and_output_decodes_without_flags(workdir, tmp_path, efficient):
    trainer = train_sft.main(args(workdir, tmp_path / "out", "--max_steps", "24", "--mask_efficient_train", efficient))
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"]
    assert "mask_acc_1" in history[0] and "mask_loss_3" in history[-1]
    model, _ = space.load_model(tmp_path / "out")
    assert space.read_mask_spec(model.config) == space.MaskSpec(320, 3, False)
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=16).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=16).tokens.tolist()


@pytest.mark.parametrize("base_key", ["base", "tied"])
def test_lora_trains_only_adapters_and_mask_rows_and_merges_identically(workdir, tmp_path, base_key):
    workdir = dict(workdir, base=workdir[base_key])
    trainer = train_sft.main(args(workdir, tmp_path / "lora", "--max_steps", "12", "--finetuning_type", "lora",
                                  "--lora_rank", "4", "--mask_efficient_train", "true"))
    peft_model = trainer.model
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name or "trainable_tokens" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable)

    base_model, _ = space.load_model(workdir["base"])
    merged_dir = merge_lora.main(["--adapter_dir", str(tmp_path / "lora"), "--output_dir", str(tmp_path / "merged")])
    merged, _ = space.load_model(merged_dir)
    unmerged, _ = space.load_model(tmp_path / "lora", merge_adapter=False)
    # frozen embedding rows are unchanged; the mask row has moved away from its mean initialisation
    before = base_model.get_input_embeddings().weight
    after = merged.get_input_embeddings().weight
    assert torch.equal(after[: before.shape[0]], before)
    mean_row = before.mean(0)
    assert not torch.allclose(after[320], mean_row, atol=1e-4)

    ids = torch.tensor([[1, 50, 60, 70, 320, 320]])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
        assert torch.allclose(unmerged(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    assert space.read_mask_spec(merged.config).mask_id == 320


def test_resume_from_checkpoint(workdir, tmp_path):
    output = tmp_path / "resume"
    first = train_sft.main(args(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"))
    assert (output / "checkpoint-4").is_dir() and first.state.global_step == 4
    with pytest.raises(space.SpaceError, match="already holds checkpoints"):
        train_sft.main(args(workdir, output, "--max_steps", "6"))
    resumed = train_sft.main(args(workdir, output, "--max_steps", "6", "--resume_from_checkpoint", "last"))
    assert resumed.state.global_step == 6
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [4]  # the history of the first run came back with the checkpoint; step 6 has no log line


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "nope_dataset"], "unknown dataset 'nope_dataset'"),
    (["--template", "alpaca"], "unknown template 'alpaca'"),
    (["--cutoff_len", "4"], "cutoff_len 4 is too short"),
    (["--mask_id", "10"], "mask id 10 is the token .*, which the tokenizer uses for text"),
    (["--mask_id", "2"], r"uses for text \(its eos token\)"),
    (["--attn_implementation", "flash_attention_2", "--mask_efficient_train", "true"],
     "flash_attention_2 cannot take the 4D attention mask of --mask_efficient_train samples; use --attn_implementation sdpa"),
    (["--attn_implementation", "flash_attention_3", "--sdsat", "true"], "flash_attention_3 cannot take .* --sdsat samples"),
    (["--attn_implementation", "flex_attention", "--mask_efficient_train", "true"], "use --attn_implementation sdpa"),
    (["--stage", "rm"], "--stage rm is not supported"),
    (["--mask_nums", "3"], r"unknown flag\(s\) for train_sft.py: \['--mask_nums'"),
])
def test_bad_input_gets_one_clear_line(workdir, tmp_path, extra, message):
    with pytest.raises(space.SpaceError, match=message) as error:
        train_sft.main(args(workdir, tmp_path / "bad", "--max_steps", "1", *extra))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("implementation,options", [
    ("flash_attention_2", dict(mask_efficient_train=False)),  # truncating mode: plain causal, 2D padding mask
    ("flash_attention_2", dict(mask_efficient_train=True, mask_num=0)),  # plain SFT: no blocks
    ("sdpa", dict(mask_efficient_train=True)),
    ("eager", dict(sdsat=True)),
])
def test_attention_kernels_that_fit_the_sample_mode_are_accepted(implementation, options):
    train_sft.check_attention(implementation, train_sft.DataArguments(**options))


def test_lora_under_zero3_off_cuda_is_refused_before_loading(monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    training_args = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(space.SpaceError, match="LoRA under ZeRO-3 needs CUDA GPUs.*configs/deepspeed/zero2.json"):
        train_sft.start_zero3_comm(training_args, train_sft.FinetuningArguments(finetuning_type="lora"))


def with_added_mask(path: Path) -> Path:
    """A base whose tokenizer already holds an added `<mask>` (id 320) with a row of its own."""
    tokenizer = tiny_text_tokenizer()
    tokenizer.add_tokens(["<mask>"])
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), init_std=0.02)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    with torch.no_grad():
        model.get_input_embeddings().weight[320] = 0.5
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_lora_with_an_existing_mask_token_trains_its_row_and_records_its_id(workdir, tmp_path):
    workdir = dict(workdir, base=with_added_mask(tmp_path / "base"))
    train_sft.main(args(workdir, tmp_path / "lora", "--max_steps", "6", "--finetuning_type", "lora", "--lora_rank", "2",
                        "--mask_id", "320", "--mask_efficient_train", "true"))
    assert json.loads((tmp_path / "lora" / "space.json").read_text())["mask_id"] == 320
    model, tokenizer = space.load_model(tmp_path / "lora")
    assert len(tokenizer) == 321 and model.get_input_embeddings().weight.shape[0] == 321  # no duplicate token or row
    assert tokenizer.convert_ids_to_tokens(320) == "<mask>" and model.config.mask_id == 320
    row = model.get_input_embeddings().weight[320]
    assert not torch.allclose(row, torch.full_like(row, 0.5), atol=1e-4)  # trained from the row it had
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()


def test_adapter_without_tokenizer_recreates_mask_tokens_or_is_refused(workdir, tmp_path):
    trainer = train_sft.main(args(workdir, tmp_path / "lora", "--max_steps", "2", "--finetuning_type", "lora",
                                  "--lora_rank", "2", "--learning_rate", "1e-2"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / "lora" / name).unlink(missing_ok=True)  # an adapter shipped without its tokenizer
    model, tokenizer = space.load_model(workdir["base"], adapter=tmp_path / "lora")
    ids = torch.tensor([[1, 50, 60, 320, 320]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits, atol=1e-4)
    assert tokenizer.convert_tokens_to_ids("<space_mask_0>") == 320
    (tmp_path / "lora" / "space.json").unlink()  # a foreign adapter: nothing says which tokens to add
    with pytest.raises(space.SpaceError, match="trains token ids up to 320 but the base has vocab 320"):
        space.load_model(workdir["base"], adapter=tmp_path / "lora")


@pytest.mark.slow
def test_real_launcher_two_rank_deepspeed_zero2_on_cpu(workdir, tmp_path):
    output = tmp_path / "ds"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", MODEL=str(workdir["base"]),
               DATASET=str(workdir["data"]), OUTPUT_DIR=str(output), NPROC_PER_NODE="2", BF16="false",
               GRADIENT_CHECKPOINTING="true", CUTOFF_LEN="128", MASK_ID="auto", MASK_PROB="1.0", MASK_NUM="3",
               LOGGING_STEPS="2", SAVE_STRATEGY="steps", MASTER_PORT=str(29600 + os.getpid() % 300),
               MASK_EFFICIENT_TRAIN="true", OMP_NUM_THREADS="1")

    def launch(*extra):
        completed = subprocess.run(["bash", str(ROOT / "run_sft_multi_node.sh"), "--use_cpu", "true", "--save_steps", "4",
                                    "--learning_rate", "3e-3", *extra], env=env, cwd=ROOT, capture_output=True,
                                   text=True, timeout=900)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        return json.loads((output / "trainer_state.json").read_text())

    state = launch("--max_steps", "8")
    assert (output / "checkpoint-8").is_dir()
    logged = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert logged[-1] < logged[0]
    env["OUTPUT_DIR"] = str(output)
    state = launch("--max_steps", "10", "--resume_from_checkpoint", "last")
    assert state["global_step"] == 10
    model, _ = space.load_model(output)
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()
