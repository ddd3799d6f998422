"""SAR-SFT training end to end on tiny models: in-process runs, LoRA, resume, bad input, config files,
the scripts' command lines and the real launcher."""

import ast
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import space
from space.testing import tiny_llama, tiny_sft_base, tiny_sft_data, tiny_sft_flags, tiny_text_tokenizer
from space.training import parse_train_args, recipe, train
from space.training.arguments import DataArguments, FinetuningArguments
from space.training.export import merge_adapter

ROOT = Path(__file__).resolve().parents[1]


make_base, make_dataset = tiny_sft_base, tiny_sft_data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return dict(base=make_base(root / "base"), tied=make_base(root / "tied", tie=True),
                data=make_dataset(root / "data.json"), root=root)


def args(workdir, output, *extra):
    return tiny_sft_flags(workdir["base"], workdir["data"], output, *extra)


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("efficient", ["false", "true"])
def test_full_finetuning_learns_and_output_decodes_without_flags(workdir, tmp_path, efficient):
    trainer = train(args(workdir, tmp_path / "out", "--max_steps", "24", "--mask_efficient_train", efficient))
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
    trainer = train(args(workdir, tmp_path / "lora", "--max_steps", "12", "--finetuning_type", "lora",
                         "--lora_rank", "4", "--mask_efficient_train", "true"))
    peft_model = trainer.model
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name or "trainable_tokens" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable)

    base_model, _ = space.load_model(workdir["base"])
    merged_dir = merge_adapter(tmp_path / "lora", tmp_path / "merged").path
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
    first = train(args(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"))
    assert (output / "checkpoint-4").is_dir() and first.state.global_step == 4
    with pytest.raises(space.SpaceError, match="already holds checkpoints"):
        train(args(workdir, output, "--max_steps", "6"))
    resumed = train(args(workdir, output, "--max_steps", "6", "--resume_from_checkpoint", "last"))
    assert resumed.state.global_step == 6
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [4]  # the history of the first run came back with the checkpoint; step 6 has no log line


def checkpoint_steps(output):
    return sorted(int(path.name.split("-")[1]) for path in output.glob("checkpoint-*"))


def test_overwrite_output_dir_starts_clean_so_resume_takes_this_runs_checkpoint(workdir, tmp_path):
    output = tmp_path / "out"
    train(args(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"))
    (output / "notes.txt").write_text("mine")
    # a new run with other settings over it: the old checkpoint-4 must not survive to be resumed later
    train(args(workdir, output, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
               "--overwrite_output_dir", "--mask_num", "2"))
    assert checkpoint_steps(output) == [1, 2]
    assert (output / "notes.txt").read_text() == "mine"  # only the run's own files go
    resumed = train(args(workdir, output, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
                         "--mask_num", "2", "--resume_from_checkpoint", "last"))
    assert resumed.state.global_step == 3 and checkpoint_steps(output) == [1, 2, 3]
    assert space.read_mask_spec(space.load_model(output)[0].config).mask_num == 2


def test_a_finished_model_is_replaced_only_with_the_flag(workdir, tmp_path):
    output = tmp_path / "out"
    train(args(workdir, output, "--max_steps", "2"))  # --save_strategy no: a model and no checkpoint
    before = (output / "model.safetensors").read_bytes()
    with pytest.raises(space.SpaceError, match=r"already holds a trained model \(.*model.safetensors.*\): pass "
                                               "--overwrite_output_dir to replace it, or choose another --output_dir"):
        train(args(workdir, output, "--max_steps", "3", "--learning_rate", "1e-2"))
    assert (output / "model.safetensors").read_bytes() == before
    train(args(workdir, output, "--max_steps", "3", "--learning_rate", "1e-2", "--overwrite_output_dir"))
    assert (output / "model.safetensors").read_bytes() != before


@pytest.fixture(scope="module")
def checkpointed(workdir):
    """A run of 4 steps with checkpoint-2 and checkpoint-4 (copied by each test that damages it)."""
    output = workdir["root"] / "checkpointed"
    train(args(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"))
    return output


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["trainer_state.json", "model.safetensors", "optimizer.pt"])
def test_resume_last_skips_a_checkpoint_half_written_by_a_kill(workdir, checkpointed, tmp_path, capfd, damage):
    output = tmp_path / "out"
    shutil.copytree(checkpointed, output)
    newest = output / "checkpoint-4" / damage
    newest.unlink() if damage == "trainer_state.json" else truncate(newest)
    resumed = train(args(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                         "--resume_from_checkpoint", "last"))
    assert resumed.state.global_step == 4  # steps 3 and 4 trained again from checkpoint-2
    assert [entry["step"] for entry in resumed.state.log_history if "loss" in entry] == [4]
    assert f"skipping {output / 'checkpoint-4'}" in capfd.readouterr().err
    from space.training.checkpoints import checkpoint_problem

    assert checkpoint_problem(output / "checkpoint-4") is None  # saved again, whole


def test_incomplete_checkpoints_named_when_nothing_can_be_resumed(workdir, checkpointed, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(checkpointed, output)
    (output / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(space.SpaceError, match=r"--resume_from_checkpoint .*checkpoint-4 is incomplete \(no "
                                               r"trainer_state.json: interrupted while saving\); pass "
                                               "--resume_from_checkpoint last"):
        train(args(workdir, output, "--max_steps", "4", "--resume_from_checkpoint", str(output / "checkpoint-4")))
    truncate(output / "checkpoint-2" / "model.safetensors")
    with pytest.raises(space.SpaceError, match=r"holds no complete checkpoint \(incomplete: checkpoint-4 \(no "
                                               r"trainer_state.json\), checkpoint-2 \(model.safetensors is truncated\);"
                                               ".*pass --overwrite_output_dir"):
        train(args(workdir, output, "--max_steps", "4", "--resume_from_checkpoint", "last"))
    with pytest.raises(space.SpaceError, match="holds only incomplete checkpoints .* pass --overwrite_output_dir"):
        train(args(workdir, output, "--max_steps", "4"))


@pytest.mark.parametrize("setup,extra,message", [
    (None, ["--resume_from_checkpoint", "last"], "--resume_from_checkpoint last: no checkpoint-\\* folder in"),
    (None, ["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint: nowhere is not a checkpoint folder"),
    ("checkpoint", [], "already holds checkpoints .*: pass --resume_from_checkpoint last to continue"),
    ("model", [], "already holds a trained model"),
    ("file", [], "--output_dir .*bad is a file; name a directory"),
    (None, ["--dataset", "nope.json"], "dataset file not found: nope.json"),
    (None, ["--max_samples", "0"], "--max_samples must be a positive number"),
    (None, ["--cutoff_len", "4"], "cutoff_len 4 is too short"),
    (None, ["--finetuning_type", "lora", "--lora_rank", "0"], r"--lora_rank must be a positive integer \(got 0\)"),
    (None, ["--finetuning_type", "lora", "--lora_dropout", "1.5"], r"--lora_dropout must be in \[0, 1\)"),
    (None, ["--attn_implementation", "flash_attention_2"],
     "--attn_implementation flash_attention_2 is not available here: it needs a CUDA GPU and the flash-attn package"),
])
def test_every_check_that_can_fail_runs_before_the_model_loads(workdir, tmp_path, no_model_loading, setup, extra,
                                                                message):
    import transformers.utils.import_utils as import_utils

    if "flash_attention_2" in extra and import_utils.is_flash_attn_2_available(kernels_fallback_ok=True):
        pytest.skip("flash attention 2 is usable on this machine")
    output = tmp_path / "bad"
    if setup == "file":
        output.write_text("not a directory")
    elif setup == "checkpoint":
        (output / "checkpoint-2").mkdir(parents=True)
        (output / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    elif setup == "model":
        output.mkdir()
        (output / "config.json").write_text("{}")
    with pytest.raises(space.SpaceError, match=message) as error:
        train(args(workdir, output, "--max_steps", "1", *extra))
    assert "\n" not in str(error.value)


def test_unknown_lora_target_names_the_models_linear_modules(workdir, tmp_path):
    with pytest.raises(space.SpaceError, match="--lora_target: no linear module named qproj in this model; its linear "
                                               "modules are down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj "
                                               r"\(or pass --lora_target all-linear\)"):
        train(args(workdir, tmp_path / "lora", "--max_steps", "1", "--finetuning_type", "lora",
                   "--lora_target", "q_proj,qproj"))
    trainer = train(args(workdir, tmp_path / "lora", "--max_steps", "1", "--finetuning_type", "lora",
                         "--lora_rank", "2", "--lora_target", "all-linear"))
    assert any("mlp.down_proj.lora_A" in name for name, _ in trainer.model.named_parameters())


def test_ctrl_c_names_the_command_that_resumes(workdir, tmp_path, monkeypatch):
    from space.training.trainer import SarTrainer

    output = tmp_path / "out"
    flags = args(workdir, output, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2")
    compute_loss = SarTrainer.compute_loss

    def interrupted_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return compute_loss(self, *args, **kwargs)

    monkeypatch.setattr(SarTrainer, "compute_loss", interrupted_at_step_3)
    monkeypatch.setattr(sys, "argv", ["scripts/train_sft.py", *flags])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "train_sft.py"), run_name="__main__")
    message = str(stop.value.code)
    assert message.startswith("interrupted: ") and f"{output / 'checkpoint-2'} is kept: resume with python " in message
    command = shlex.split(message.split("resume with ", 1)[1])
    assert command[0] == "python" and command[1].endswith("scripts/train_sft.py") and \
        command[-2:] == ["--resume_from_checkpoint", "last"]
    monkeypatch.setattr(SarTrainer, "compute_loss", compute_loss)
    with pytest.raises(space.SpaceError, match="already holds checkpoints"):  # the same command is refused
        train(flags)
    assert train(command[2:]).state.global_step == 6  # the named one resumes

    hint = recipe.resume_hint
    assert hint(args(workdir, tmp_path / "fresh")) == \
        f"no checkpoint was saved in {tmp_path / 'fresh'} yet: rerun the same command to start again"
    assert hint([*flags, "--resume_from_checkpoint", "x"]).endswith(
        "--save_steps 2 --resume_from_checkpoint last")  # an explicit checkpoint becomes the newest one


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "nope_dataset"], "unknown dataset 'nope_dataset'"),
    (["--template", "alpaca"], "unknown template 'alpaca'"),
    (["--cutoff_len", "4"], "cutoff_len 4 is too short"),
    (["--mask_id", "10"], "mask id 10 is the token .*, which the tokenizer uses for text"),
    (["--mask_id", "2"], r"uses for text \(its eos token\)"),
    (["--attn_implementation", "flash_attention_2", "--mask_efficient_train", "true"],
     "flash_attention_2 cannot take the 4D attention mask of --mask_efficient_train samples; "
     "use --attn_implementation sdpa"),
    (["--attn_implementation", "flash_attention_3", "--sdsat", "true"],
     "flash_attention_3 cannot take .* --sdsat samples"),
    (["--attn_implementation", "flex_attention", "--mask_efficient_train", "true"], "use --attn_implementation sdpa"),
    (["--stage", "rm"], "--stage rm is not supported"),
    (["--mask_nums", "3"], r"unknown flag\(s\) for train_sft.py: \['--mask_nums'"),
    (["--finetuning_type", "lora", "--lora_alpha", "0"], r"--lora_alpha must be a positive number \(got 0.0\)"),
])
def test_bad_input_gets_one_clear_line(workdir, tmp_path, extra, message):
    with pytest.raises(space.SpaceError, match=message) as error:
        train(args(workdir, tmp_path / "bad", "--max_steps", "1", *extra))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("implementation,options", [
    ("flash_attention_2", dict(mask_efficient_train=False)),  # truncating mode: plain causal, 2D padding mask
    ("flash_attention_2", dict(mask_efficient_train=True, mask_num=0)),  # plain SFT: no blocks
    ("sdpa", dict(mask_efficient_train=True)),
    ("eager", dict(sdsat=True)),
])
def test_attention_kernels_that_fit_the_sample_mode_are_accepted(implementation, options):
    recipe.check_attention(implementation, DataArguments(**options))


def test_lora_under_zero3_off_cuda_is_refused_before_loading(monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    training_args = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(space.SpaceError, match="LoRA under ZeRO-3 needs CUDA GPUs.*configs/deepspeed/zero2.json"):
        recipe.start_zero3_comm(training_args, FinetuningArguments(finetuning_type="lora"))


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
    train(args(workdir, tmp_path / "lora", "--max_steps", "6", "--finetuning_type", "lora", "--lora_rank", "2",
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
    trainer = train(args(workdir, tmp_path / "lora", "--max_steps", "2", "--finetuning_type", "lora",
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
               OUTPUT_DIR=str(output), NPROC_PER_NODE="2", MASTER_PORT=str(29600 + os.getpid() % 300),
               OMP_NUM_THREADS="1")
    # the published recipe (configs/sft/llama2_7b.yaml), changed by flags after the launcher
    recipe_flags = ["--dataset", str(workdir["data"]), "--bf16", "false", "--gradient_checkpointing", "true",
                    "--cutoff_len", "128", "--mask_id", "auto", "--mask_prob", "1.0", "--mask_num", "3",
                    "--logging_steps", "2", "--save_strategy", "steps", "--mask_efficient_train", "true"]

    def launch(*extra):
        completed = subprocess.run(["bash", str(ROOT / "run_sft_multi_node.sh"), *recipe_flags, "--use_cpu", "true",
                                    "--save_steps", "4", "--learning_rate", "3e-3", *extra], env=env, cwd=ROOT,
                                   capture_output=True, text=True, timeout=900)
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


# --- the recipe file, config files and the scripts' command lines ------------------------------------

RECIPE = ROOT / "configs" / "sft" / "llama2_7b.yaml"
# the flags run_sft_multi_node.sh built from its defaults before the recipe moved into configs/sft/
OLD_LAUNCHER_FLAGS = [
    "--stage", "sft", "--do_train", "--model_name_or_path", "MODEL", "--dataset", "alpaca_gpt4_en,lima",
    "--dataset_dir", "data", "--template", "default", "--finetuning_type", "full", "--output_dir", "OUT",
    "--overwrite_output_dir", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
    "--lr_scheduler_type", "cosine", "--learning_rate", "5e-5", "--num_train_epochs", "2.0", "--logging_steps", "10",
    "--save_strategy", "epoch", "--plot_loss", "--bf16", "true", "--gradient_checkpointing", "true",
    "--cutoff_len", "2048", "--remove_unused_columns", "false", "--report_to", "none", "--mask_num", "5",
    "--mask_prob", "0.5", "--mask_diff", "false", "--mask_random", "false", "--mask_efficient_train", "false",
    "--mask_loss_weight", "1", "--mask_id", "32002", "--deepspeed", "configs/deepspeed/zero2.json",
]
ON_CPU = ["--use_cpu", "true"]  # bf16 is refused without a GPU unless the run is on the CPU


def test_recipe_file_parses_into_the_old_launcher_defaults(monkeypatch):
    monkeypatch.chdir(ROOT)  # the DeepSpeed config path is relative, as the launcher passes it
    old = parse_train_args(OLD_LAUNCHER_FLAGS + ON_CPU)
    new = parse_train_args([str(RECIPE), "--dataset_dir", "data", "--output_dir", "OUT",
                            "--model_name_or_path", "MODEL", "--deepspeed", "configs/deepspeed/zero2.json", *ON_CPU])
    assert new == old  # every dataclass field, TrainingArguments included
    assert new.training.learning_rate == 5e-5 and new.data.mask_id == 32002 and new.finetuning.plot_loss
    assert parse_train_args([str(RECIPE), *ON_CPU]).model.model_name_or_path == "meta-llama/Llama-2-7b-hf"


def fake_launcher(tmp_path, name):
    """An executable `name` on PATH that writes the arguments it was given, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path / name}.args"\n')
    (bin_dir / name).chmod(0o755)
    return bin_dir


def run_launcher(env, *flags):
    return subprocess.run(["bash", str(ROOT / "run_sft_multi_node.sh"), *flags], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate"])
def test_launcher_passes_the_recipe_file_then_extra_flags(tmp_path, monkeypatch, launcher):
    monkeypatch.chdir(ROOT)
    bin_dir = fake_launcher(tmp_path, "deepspeed")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MODEL="/models/llama", OUTPUT_DIR="/tmp/out",
               LAUNCHER=launcher, PYTHON=str(bin_dir / "deepspeed"))  # the fake stands in for python too
    completed = run_launcher(env, "--finetuning_type", "lora", "--lora_rank", "32", "--mask_id", "auto")
    assert completed.returncode == 0, completed.stderr
    argv = (tmp_path / "deepspeed.args").read_text().splitlines()
    assert completed.stdout.startswith("+ ") and " ".join(argv) in completed.stdout  # the echoed command is the run one
    script = argv.index("scripts/train_sft.py")
    if launcher == "deepspeed":
        assert argv[:script] == ["--num_gpus", "8", "--master_port", "29500"]
    else:
        assert argv[:script] == ["-m", "accelerate.commands.launch", "--config_file",
                                 "configs/accelerate/deepspeed_zero2_8gpu.yaml", "--num_machines", "1",
                                 "--machine_rank", "0", "--num_processes", "8", "--main_process_ip", "127.0.0.1",
                                 "--main_process_port", "29500"]
    assert argv[script + 1] == "configs/sft/llama2_7b.yaml"
    parsed = parse_train_args(argv[script + 1:] + ON_CPU)
    expected = parse_train_args(OLD_LAUNCHER_FLAGS + ON_CPU + ["--finetuning_type", "lora", "--lora_rank", "32",
                                                               "--model_name_or_path", "/models/llama",
                                                               "--output_dir", "/tmp/out"])
    expected.data.mask_id = None  # --mask_id auto
    if launcher == "accelerate":  # accelerate takes DeepSpeed's settings from its own config file
        assert "--deepspeed" not in argv
        expected = parse_train_args([str(RECIPE), *ON_CPU, "--finetuning_type", "lora", "--lora_rank", "32",
                                     "--model_name_or_path", "/models/llama", "--output_dir", "/tmp/out",
                                     "--mask_id", "auto"])
    assert parsed == expected
    assert parsed.finetuning.finetuning_type == "lora" and parsed.finetuning.lora_rank == 32


def test_launcher_multi_node_variables_and_a_bad_launcher(tmp_path):
    bin_dir = fake_launcher(tmp_path, "deepspeed")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
               MASTER_PORT="29555", NPROC_PER_NODE="4", CONFIG="my.yaml", DATASET_DIR="/data", OUTPUT_DIR="/out",
               DS_CONFIG="configs/deepspeed/zero3.json")
    assert run_launcher(env, "--max_steps", "3").returncode == 0
    assert (tmp_path / "deepspeed.args").read_text().splitlines() == [
        "--no_ssh", "--num_nodes", "2", "--node_rank", "1", "--num_gpus", "4", "--master_addr", "10.0.0.1",
        "--master_port", "29555", "scripts/train_sft.py", "my.yaml", "--dataset_dir", "/data", "--output_dir", "/out",
        "--deepspeed", "configs/deepspeed/zero3.json", "--max_steps", "3"]
    completed = run_launcher(dict(env, HOSTFILE="hosts"))
    assert completed.returncode == 0
    assert (tmp_path / "deepspeed.args").read_text().splitlines()[:6] == [
        "--hostfile", "hosts", "--master_addr", "10.0.0.1", "--master_port", "29555"]
    completed = run_launcher(dict(env, LAUNCHER="mpirun"))
    assert completed.returncode == 2 and "LAUNCHER must be deepspeed or accelerate (got mpirun)" in completed.stderr


def test_config_file_values_are_defaults_that_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("stage: sft\nmask_num: 3\nmask_id: auto\nlearning_rate: 5e-5\nnum_train_epochs: 1\n"
                      "report_to: none\nmask_efficient_train: true\nlora_alpha: 64\n")
    parsed = parse_train_args(["--local_rank=0", str(config), "--output_dir", "out", "--mask_num", "4", *ON_CPU])
    assert parsed.training.local_rank == 0  # DeepSpeed's launcher puts --local_rank first
    assert parsed.data.mask_num == 4 and parsed.data.mask_id is None and parsed.data.mask_efficient_train is True
    # converted exactly like the same flags (YAML reads 5e-5 as a string and 1, 64 as ints)
    as_flags = parse_train_args(["--output_dir", "out", "--mask_num", "4", "--learning_rate", "5e-5",
                                 "--num_train_epochs", "1", "--report_to", "none", "--mask_efficient_train", "true",
                                 "--lora_alpha", "64", "--local_rank=0", *ON_CPU])
    assert parsed == as_flags and isinstance(parsed.training.num_train_epochs, float)
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"mask_num": 4, "learning_rate": 5e-5, "num_train_epochs": 1, "report_to": "none",
                                       "mask_efficient_train": True, "lora_alpha": 64, "local_rank": 0,
                                       "output_dir": "out", "use_cpu": True}))
    assert recipe.as_train_args(json_config) == recipe.as_train_args(str(json_config)) == as_flags
    assert recipe.as_train_args(json.loads(json_config.read_text())) == as_flags
    assert parse_train_args(["--mask_id=auto", "--sat_id", "auto", *ON_CPU]).data.sat_id is None


@pytest.mark.parametrize("content,message", [
    ("mask_nums: 3\nstage: sft\n",
     r"unknown key\(s\) in .*run.yaml: \['mask_nums'\]; keys are train_sft.py flag names"),
    ("- stage\n", "run.yaml: expected a mapping of flag names to values"),
])
def test_bad_config_file_gets_one_clear_line(tmp_path, content, message):
    (tmp_path / "run.yaml").write_text(content)
    with pytest.raises(space.SpaceError, match=message):
        parse_train_args([str(tmp_path / "run.yaml")])
    with pytest.raises(space.SpaceError, match="config file not found: .*missing.yaml"):
        parse_train_args([str(tmp_path / "missing.yaml")])


def test_train_sft_script_takes_a_config_file_and_flags_after_it(workdir, tmp_path):
    config = tmp_path / "run.yaml"
    flags = args(workdir, tmp_path / "out", "--max_steps", "50")[3:]  # after --stage sft --do_train
    config.write_text("stage: sft\ndo_train: true\n" + "".join(f"{key[2:]}: {json.dumps(value)}\n"
                                                               for key, value in zip(flags[::2], flags[1::2])))
    main = runpy.run_path(str(ROOT / "scripts" / "train_sft.py"))["main"]
    trainer = main([str(config), "--max_steps", "2", "--mask_num", "2"])
    assert trainer.state.global_step == 2
    assert space.read_mask_spec(space.load_model(tmp_path / "out")[0].config) == space.MaskSpec(320, 2, False)


WING_SCRIPTS = ["train_sft", "bench_train", "make_default_model", "make_distill_data", "merge_lora",
                "export_default_model"]


@pytest.mark.parametrize("name", WING_SCRIPTS)
def test_training_scripts_import_the_library_only(name):
    path = ROOT / "scripts" / f"{name}.py"
    source = path.read_text()
    assert "sys.path" not in source
    imported = {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not imported & set(WING_SCRIPTS)
    assert callable(runpy.run_path(str(path))["main"])


def test_importing_the_training_entry_point_loads_no_deepspeed_or_peft():
    code = ("import sys; from space.training import train, parse_train_args; "
            "print(sorted(m for m in ('deepspeed', 'peft', 'transformers.trainer') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env=dict(os.environ,
                                        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_deepspeed_without_cuda_trains_on_the_cpu_ranks(workdir, tmp_path):
    """The published launch line without --use_cpu on a machine without CUDA: DeepSpeed would refuse its batch size
    on every rank (a world of one against two ranks); the run trains on the CPU ranks instead, and an explicit
    --use_cpu false is one line."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains on its GPUs")
    flags = [*args(workdir, tmp_path / "out"), "--deepspeed", "configs/deepspeed/zero2.json"]
    at = flags.index("--use_cpu")
    del flags[at : at + 2]  # the published launch line sets no --use_cpu
    assert parse_train_args(flags).training.use_cpu is True
    with pytest.raises(space.SpaceError, match="--deepspeed without CUDA GPUs trains on the CPU ranks: pass "
                                               "--use_cpu true, not false"):
        parse_train_args([*flags, "--use_cpu", "false"])
