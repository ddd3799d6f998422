"""Gated adapters (`space.adapters.gated`, `--finetuning_type gated_lora`): every real token is the base model's,
exactly.

Checked on tiny random models in fp32: logits and KV entries of non-mask rows equal the base's bit for bit (causal,
multi-block and decoding layouts; HF's forward and the lean CPU forward), SPACE on a gated model reproduces the
*base* model's AR output, training moves only the adapter (the two-phase loss equals the one-pass loss, gradients
too), and a trained run loads, exports and decodes with no flag."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import space
from space.adapters.gated import GATED_WEIGHTS, GatedConfig, GatedLoRA, MaskEmbeddings, add_gated_lora, gated_state_dict
from space.bench.gated_step_cost import GatedStepArgs, measure_gated_step, parse_gated_step_args, random_gated_twin
from space.errors import SpaceError
from space.kernels.fast_linear import use_fast_linear
from space.kernels.lean_layers import use_lean_layers
from space.testing import tiny_llama, tiny_sft_flags
from space.testing import tiny_sft_base as make_base
from space.testing import tiny_sft_data as make_dataset
from space.training import train
from space.training.collate import SarCollator
from space.training.export import ExportArguments, export_adapter, merge_adapter
from space.training.loss import sar_loss
from space.training.samples import MaskingConfig, build_sample
from space.training.trainer import SarTrainer
from space.window import additive_mask


def train_args(work, output, *extra):
    return tiny_sft_flags(work["base"], work["data"], output, *extra)


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_and_gated(seed: int = 0, mask_num: int = 3, mask_diff: bool = True, tie: bool = False, rank: int = 4):
    """A tiny base whose mask rows are mean rows (as `add_mask_tokens` makes them: a mask id is never its argmax)
    and a copy carrying a gated adapter with random (non-zero) weights."""
    base = tiny_llama(seed=seed, mask_num=mask_num, mask_diff=mask_diff, tie_word_embeddings=tie)
    spec = space.read_mask_spec(base.config)
    with torch.no_grad():
        for matrix in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
            matrix[spec.mask_id :] = matrix[: spec.mask_id].mean(0)
    gated = copy.deepcopy(base)
    add_gated_lora(gated, spec.mask_id, spec.num_ids, GatedConfig(rank=rank, alpha=2.0 * rank, targets=TARGETS))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in gated_state_dict(gated).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    gated.requires_grad_(False)
    return base, gated, spec


def fast(*models):
    for model in models:
        use_fast_linear(model)
        assert use_lean_layers(model) > 0
    return models


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_non_mask_rows_equal_the_base_exactly_causal_and_multi_block(lean, tie):
    base, gated, spec = base_and_gated(seed=3, tie=tie)
    if lean:
        fast(base, gated)
    # causal: masks at the end (the truncating layout)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, *spec.group_ids(4)]])
    with torch.no_grad():
        plain, adapted = base(input_ids=ids).logits, gated(input_ids=ids).logits
    assert torch.equal(plain[:, :6], adapted[:, :6])
    assert (plain[:, 6:] - adapted[:, 6:]).abs().max() > 1e-2  # the adapter does act on the mask rows
    # multi-block: real tokens, then two private blocks
    sample = build_sample([([1, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 2])],
                          MaskingConfig(mask_num=3, mask_id=spec.mask_id, mask_diff=True, efficient=True,
                                        mask_blocks=2, cutoff_len=64), __import__("random").Random(0))
    batch = SarCollator(pad_token_id=0)([sample])
    mask = additive_mask(batch["attention_mask_4d"], torch.float32)
    with torch.no_grad():
        plain = base(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
        adapted = gated(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
    real = batch["mask_offsets"][0] == 0
    assert torch.equal(plain[0, real], adapted[0, real])
    assert (plain[0, ~real] - adapted[0, ~real]).abs().max() > 1e-2


def test_a_padded_batch_keeps_every_real_row_exact():
    base, gated, spec = base_and_gated(seed=6)
    ids = torch.tensor([[1, 5, 6, 7, *spec.group_ids(4), 0, 0], [1, 8, 9, 10, 11, 12, 13, *spec.group_ids(3)]])
    attention = torch.tensor([[1] * 8 + [0, 0], [1] * 10])
    with torch.no_grad():
        plain = base(input_ids=ids, attention_mask=attention).logits
        adapted = gated(input_ids=ids, attention_mask=attention).logits
    real = (ids < spec.mask_id) & attention.bool()
    assert torch.equal(plain[real], adapted[real])
    assert (plain[~real & attention.bool()] - adapted[~real & attention.bool()]).abs().max() > 1e-2


def test_kv_cache_entries_of_real_tokens_equal_the_base():
    base, gated, spec = base_and_gated(seed=4)
    ids = torch.tensor([[1, 20, 21, 22, *spec.group_ids(4)]])
    caches = []
    for model in (base, gated):
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, **{space.cache.cache_argument(model): cache})
        caches.append(cache)
    for layer_base, layer_gated in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(layer_base.keys[:, :, :4], layer_gated.keys[:, :, :4])
        assert torch.equal(layer_base.values[:, :, :4], layer_gated.values[:, :, :4])
        assert not torch.equal(layer_base.keys[:, :, 4:], layer_gated.keys[:, :, 4:])


def test_inputs_embeds_run_the_base_and_a_stale_gate_never_leaks():
    base, gated, spec = base_and_gated(seed=5)
    with torch.no_grad():
        gated(input_ids=torch.tensor([[1, 5, *spec.group_ids(4)]]))  # leaves mask rows in the gate
        embeds = base.get_input_embeddings()(torch.tensor([[1, 5, 6, 7, 8, 9]]))
        assert torch.equal(gated(inputs_embeds=embeds).logits, base(inputs_embeds=embeds).logits)


def _mask_row_logits(model, ids, train_mode: bool):
    model.train(train_mode)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize("targets", [TARGETS, ("q_proj", "v_proj", "up_proj", "down_proj")])
def test_inference_deltas_equal_each_adapters_own(lean, targets):
    """Inference computes a group's deltas from stacked, transposed copies (`space.adapters.gated.group_deltas`);
    training takes each adapter's own product. Both give the same mask rows, also for a group where one projection
    has no adapter (k_proj, gate_proj above)."""
    base, _, spec = base_and_gated(seed=7)
    gated = copy.deepcopy(base)
    add_gated_lora(gated, spec.mask_id, spec.num_ids, GatedConfig(rank=4, alpha=8.0, targets=targets))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in gated_state_dict(gated).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    gated.requires_grad_(False)
    if lean:
        fast(gated)
    ids = torch.tensor([[1, 5, 6, *spec.group_ids(3), 7, *spec.group_ids(3)]])
    own = _mask_row_logits(gated, ids, train_mode=True)  # training: every layer's own forward and delta
    inference = _mask_row_logits(gated, ids, train_mode=False)
    plain = _mask_row_logits(base, ids, train_mode=False)
    assert torch.allclose(inference, own, atol=1e-4, rtol=1e-4)
    assert (inference - plain).abs().max() > 1e-2


@pytest.mark.parametrize("lean", [False, True])
def test_inference_copies_follow_adapter_weights_changed_in_place(lean):
    base, gated, spec = base_and_gated(seed=8)
    if lean:
        fast(gated)
    ids = torch.tensor([[1, 5, 6, *spec.group_ids(3)]])
    before = _mask_row_logits(gated, ids, train_mode=False)  # takes the copies
    with torch.no_grad():
        for name, parameter in gated.named_parameters():
            if ".gated_lora." in name:
                parameter.mul_(-1.5)
    after = _mask_row_logits(gated, ids, train_mode=False)
    assert (after - before).abs().max() > 1e-2
    assert torch.allclose(after, _mask_row_logits(gated, ids, train_mode=True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("use_cache", [True, False])
def test_space_on_a_gated_model_is_the_base_models_ar_output(seed, tree, use_cache):
    base, gated, _ = base_and_gated(seed=seed, mask_num=2 + seed % 3, mask_diff=seed % 2 == 0)
    if seed % 2:
        fast(base, gated)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 80, (1, 5 + seed), generator=generator)
    expected = space.decode(base, prompt, "ar", max_new_tokens=32).tokens.tolist()
    got = space.decode(gated, prompt, "space", max_new_tokens=32, tree=tree, use_cache=use_cache).tokens.tolist()
    assert got == expected


def _original_and_loud_masks(seed: int):
    """The base as it was before mask tokens (its vocabulary cut at the first mask id), and a gated copy whose mask
    ids' lm_head rows are loud enough to win the argmax at most positions were they allowed to."""
    base, gated, spec = base_and_gated(seed=seed, mask_num=3, mask_diff=True)
    original = copy.deepcopy(base)
    original.resize_token_embeddings(spec.mask_id)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = gated.get_output_embeddings().weight
        head[spec.mask_id :] = torch.randn(head[spec.mask_id :].shape, generator=generator) * 4
    return original, gated, spec


@pytest.mark.parametrize("seed", range(3))
def test_a_gated_model_never_emits_a_mask_id_and_decodes_as_the_original_vocabulary(seed):
    original, gated, spec = _original_and_loud_masks(seed)
    prompt = torch.randint(3, 80, (1, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # the precondition: unchecked, the loud mask columns would be emitted
        assert (gated(input_ids=prompt).logits[0].argmax(-1) >= spec.mask_id).any()
    expected = space.decode(original, prompt, "ar", max_new_tokens=24).tokens.tolist()
    for method, options in (("ar", {}), ("space", dict(tree=False)), ("space", dict(tree=True))):
        assert space.decode(gated, prompt, method, max_new_tokens=24, **options).tokens.tolist() == expected


@pytest.mark.parametrize("seed", range(2))
def test_the_hf_baselines_on_a_gated_model_never_emit_a_mask_id(seed):
    """HF `generate` and prompt lookup on a gated model suppress its mask ids, as the project's decoders leave their
    columns out: the output is the original vocabulary's, even where the mask columns would win."""
    original, gated, spec = _original_and_loud_masks(seed)
    prompt = torch.randint(3, 80, (1, 6), generator=torch.Generator().manual_seed(seed))
    expected = space.decode(original, prompt, "ar", max_new_tokens=24).tokens.tolist()
    for method in ("hf", "prompt_lookup"):
        assert space.decode(gated, prompt, method, max_new_tokens=24).tokens.tolist() == expected, method
    drawn = [space.decode(gated, prompt, "hf", max_new_tokens=8, do_sample=True, temperature=1.5, seed=s).tokens
             for s in range(6)]
    assert all(int(token) < spec.mask_id for tokens in drawn for token in tokens)


def test_a_prompt_with_a_mask_id_is_refused_on_a_gated_model():
    _, gated, spec = base_and_gated(seed=2)
    prompt = torch.tensor([[1, 5, spec.mask_id, 7]])
    for method in ("ar", "space", "hf", "prompt_lookup", "sdsat"):
        with pytest.raises(SpaceError, match="the prompt contains a mask id"):
            space.decode(gated, prompt, method, max_new_tokens=4)


def test_sampling_from_a_gated_model_never_draws_a_mask_id():
    _, gated, spec = _original_and_loud_masks(seed=1)
    prompt = torch.tensor([[1, 5, 6, 7]])
    drawn = [space.decode(gated, prompt, method, max_new_tokens=8, do_sample=True, temperature=1.5,
                          seed=seed).tokens for seed in range(12) for method in ("ar", "space")]
    assert all(int(token) < spec.mask_id for tokens in drawn for token in tokens)


def _two_phase_and_one_pass(seed: int):
    """The gated trainer's loss (real tokens as a no-grad cache, then the blocks) and the plain one-pass loss over
    the same multi-block batch, restricted to the mask predictions, with each one's adapter gradients."""
    _, gated, spec = base_and_gated(seed=seed)
    gated.train()
    adapter = set(gated_state_dict(gated))
    for name, parameter in gated.named_parameters():
        parameter.requires_grad_(name in adapter)
    rng = __import__("random").Random(seed)
    config = MaskingConfig(mask_num=3, mask_id=spec.mask_id, mask_diff=True, efficient=True, mask_blocks=3,
                           mask_random=True, cutoff_len=96)
    samples = [build_sample([([1, 10 + i], [rng.randint(4, 80) for _ in range(10 + 5 * i)] + [2])], config, rng)
               for i in range(3)]
    trainer = SarTrainer.__new__(SarTrainer)  # only the loss: no Trainer machinery
    trainer.gated, trainer.mask_num, trainer.mask_loss_weight = True, 3, 0.7
    trainer.model_config, trainer.cache_name = gated.config, space.cache.cache_argument(gated)
    trainer.mask_metrics = type("Sink", (), {"add": lambda self, metrics: None})()
    results = []
    for split in (True, False):
        batch = SarCollator(pad_token_id=0, split_prefix=split)(samples)
        gated.zero_grad()
        if split:
            loss = trainer.gated_loss(gated, dict(batch))
        else:
            mask = additive_mask(batch["attention_mask_4d"], torch.float32)
            logits = gated(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
            labels = batch["labels"].masked_fill(batch["mask_offsets"] == 0, -100)  # the mask predictions only
            loss, _ = sar_loss(logits, labels, batch["mask_offsets"], 0.7, 3)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in gated.named_parameters() if p.grad is not None}))
    return results


@pytest.mark.parametrize("seed", range(3))
def test_two_phase_training_loss_and_gradients_equal_the_one_pass(seed):
    (split_loss, split_grads), (full_loss, full_grads) = _two_phase_and_one_pass(seed)
    assert torch.allclose(split_loss, full_loss, atol=1e-5)
    assert set(split_grads) == set(full_grads) == set(gated_state_dict(base_and_gated(seed=seed)[1]))
    for name in split_grads:
        assert torch.allclose(split_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gated")
    work = dict(base=make_base(root / "base", tie=True), data=make_dataset(root / "data.json"))
    trainer = train(train_args(work, root / "out", "--max_steps", "12", "--finetuning_type", "gated_lora",
                               "--lora_rank", "4", "--mask_efficient_train", "true", "--mask_diff", "true",
                               "--save_strategy", "steps", "--save_steps", "6"))
    return SimpleRun(root, work, trainer)


class SimpleRun:
    def __init__(self, root, work, trainer):
        self.root, self.work, self.trainer, self.output = root, work, trainer, root / "out"


def test_training_moves_only_the_adapter(trained):
    model = trained.trainer.model
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(gated_state_dict(model))
    fresh, tokenizer = space.load_model(trained.work["base"], fast_cpu_linear=False)
    space.add_mask_tokens(fresh, tokenizer, mask_num=3, mask_diff=True)
    fresh_state = fresh.state_dict()
    for name, tensor in model.state_dict().items():
        if name in fresh_state:
            assert torch.equal(tensor, fresh_state[name]), name  # the base and its shared mask rows, untouched
    adapter = gated_state_dict(model)
    assert any(name.endswith("lora_B") and tensor.abs().max() > 0 for name, tensor in adapter.items())
    masks = next(tensor for name, tensor in adapter.items() if "gated_masks" in name)
    spec = space.read_mask_spec(fresh.config)
    rows = fresh.get_input_embeddings().weight[spec.mask_id : spec.mask_id + spec.num_ids]
    assert not torch.allclose(masks, rows)  # the mask inputs learned
    history = [entry for entry in trained.trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"] and "mask_acc_3" in history[-1]


def test_a_gated_run_saves_the_adapter_alone_and_loads_without_flags(trained, tmp_path):
    files = {path.name for path in trained.output.iterdir()}
    assert GATED_WEIGHTS in files and "model.safetensors" not in files and "adapter_config.json" not in files
    assert {path.name for path in (trained.output / "checkpoint-6").iterdir()} >= {GATED_WEIGHTS, "optimizer.pt"}
    fields = json.loads((trained.output / "space.json").read_text())
    assert fields["adapter"] == "gated_lora" and fields["gated"]["rank"] == 4
    model, _ = space.load_model(trained.output)
    base, _ = space.load_model(trained.work["base"])
    assert model.config.space_adapter == "gated_lora"
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=16).tokens.tolist() == \
        space.decode(base, prompt, "ar", max_new_tokens=16).tokens.tolist()
    exported = export_adapter(ExportArguments(adapter_dir=str(trained.output), output=str(tmp_path / "export"),
                                              dtype="float32", mask_num=2,
                                              base_model=str(trained.work["base"])))
    assert {path.name for path in exported.path.iterdir()} == {GATED_WEIGHTS, "space.json"}
    again, _ = space.load_model(exported.path)
    ids = torch.tensor([[1, 50, 60, 320, 321, 322]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert space.read_mask_spec(again.config).mask_num == 2
    with pytest.raises(SpaceError, match="is a gated adapter: merged, it would act on every token"):
        merge_adapter(trained.output, tmp_path / "merged")


def test_resuming_a_gated_run_loads_the_adapter_from_the_checkpoint(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file

    checkpoint = trained.output / "checkpoint-12"
    model = trained.trainer.model
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in gated_state_dict(model):
                parameter.zero_()
    trained.trainer._load_from_checkpoint(str(checkpoint))
    saved = load_file(checkpoint / GATED_WEIGHTS)
    assert saved.keys() == gated_state_dict(model).keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in gated_state_dict(model).items())
    shutil.copytree(trained.output, tmp_path / "out")
    trainer = train(train_args(trained.work, tmp_path / "out", "--max_steps", "16", "--finetuning_type", "gated_lora",
                               "--lora_rank", "4", "--mask_efficient_train", "true", "--mask_diff", "true",
                               "--save_strategy", "steps", "--save_steps", "6", "--resume_from_checkpoint", "last"))
    assert trainer.state.global_step == 16
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [4, 8, 12, 16]


@pytest.mark.parametrize("extra,message", [
    (["--sdsat", "true"], "trains SPACE mask tokens; SDSAT's adaptive tokens"),
    (["--gradient_checkpointing", "true"],
     "--gradient_checkpointing is not supported with --finetuning_type gated_lora"),
    (["--mask_num", "0"], "needs --mask_num >= 1"),
    (["--attn_implementation", "flash_attention_2"],
     "cannot take the 4D attention mask of --finetuning_type gated_lora"),
    (["--lora_rank", "0"], "--lora_rank must be a positive integer"),
    (["--deepspeed", "configs/deepspeed/zero3.json"], "under ZeRO-3 is not supported"),
])
def test_bad_gated_settings_get_one_line_before_the_model_loads(tmp_path, no_model_loading, extra, message,
                                                                 monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    work = dict(base=tmp_path / "no-model", data=make_dataset(tmp_path / "data.json"))
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(train_args(work, tmp_path / "out", "--finetuning_type", "gated_lora", *extra))


@pytest.mark.slow
def test_gated_training_under_the_real_launcher_with_deepspeed_zero2_on_two_cpu_ranks(tmp_path):
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    work = dict(base=make_base(tmp_path / "base"), data=make_dataset(tmp_path / "data.json"))
    output = tmp_path / "ds"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", MODEL=str(work["base"]),
               OUTPUT_DIR=str(output), NPROC_PER_NODE="2", MASTER_PORT=str(29300 + os.getpid() % 300),
               OMP_NUM_THREADS="1")
    # the published recipe (ZeRO-2), changed by flags after the launcher: a gated adapter on multi-block samples
    flags = ["--dataset", str(work["data"]), "--bf16", "false", "--gradient_checkpointing", "false", "--cutoff_len",
             "128", "--mask_id", "auto", "--mask_prob", "1.0", "--mask_num", "3", "--mask_diff", "true",
             "--logging_steps", "2", "--save_strategy", "steps", "--save_steps", "4", "--mask_efficient_train", "true",
             "--finetuning_type", "gated_lora", "--lora_rank", "4", "--learning_rate", "3e-3", "--use_cpu", "true",
             "--max_steps", "6"]
    completed = subprocess.run(["bash", str(root / "run_sft_multi_node.sh"), *flags], env=env, cwd=root,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged[-1]["loss"] < logged[0]["loss"] and "mask_acc_3" in logged[-1]
    assert (output / GATED_WEIGHTS).is_file() and (output / "checkpoint-4" / GATED_WEIGHTS).is_file()
    model, _ = space.load_model(output)
    base, _ = space.load_model(work["base"])
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(base, prompt, "ar", max_new_tokens=12).tokens.tolist()


def test_a_failed_export_leaves_the_output_untouched(trained, tmp_path):
    output = tmp_path / "shipped"
    output.mkdir()
    (output / "adapter_config.json").write_text("{}")
    with pytest.raises(SpaceError, match="--mask_num 9 must be between 1 and the trained mask_num 3"):
        export_adapter(ExportArguments(adapter_dir=str(trained.output), output=str(output), mask_num=9))
    assert [path.name for path in output.iterdir()] == ["adapter_config.json"]


@pytest.mark.parametrize("edit,message", [
    (dict(gated=[]), "gated must be an object or null"),
    (dict(gated=dict(rank=4.5, alpha=8, targets=["q_proj"])), "'gated' must hold rank \\(a positive integer\\)"),
    (dict(gated=dict(rank=4, alpha=8, targets="q_proj")), "'gated' must hold rank"),
    (dict(mask_id=None), 'does not say "adapter": "gated_lora" with the mask fields'),
])
def test_a_damaged_gated_space_json_gets_one_line(trained, tmp_path, edit, message):
    import shutil

    shutil.copytree(trained.output, tmp_path / "out")
    fields = json.loads((tmp_path / "out" / "space.json").read_text())
    (tmp_path / "out" / "space.json").write_text(json.dumps({**fields, **edit}))
    with pytest.raises(SpaceError, match=message):
        space.load_model(tmp_path / "out")


def test_a_gated_dir_without_weights_is_named(trained, tmp_path):
    import shutil

    shutil.copytree(trained.output, tmp_path / "out")
    (tmp_path / "out" / GATED_WEIGHTS).unlink()
    with pytest.raises(SpaceError, match="gated adapter .* has no weights \\(gated_adapter.safetensors\\)"):
        space.load_model(tmp_path / "out")


def test_the_gated_step_benchmark_times_both_models_on_identical_outputs(monkeypatch):
    base, _, spec = base_and_gated(seed=11)
    twin = random_gated_twin(base, rank=4, seed=0)
    ids = torch.tensor([[1, 5, 6, *spec.group_ids(3)]])
    with torch.no_grad():
        plain, gated = base(input_ids=ids).logits, twin(input_ids=ids).logits
    assert torch.equal(gated[:, :3], plain[:, :3])  # real rows: the base's
    assert (gated[:, 3:] - plain[:, 3:]).abs().max() > 1e-6  # mask rows: the random adapter does work
    assert all(torch.equal(a, b) for a, b in zip(gated_state_dict(twin).values(),
                                                 gated_state_dict(random_gated_twin(base, rank=4, seed=0)).values()))
    delta_calls = []
    real_group_deltas = space.kernels.lean_layers.group_deltas
    monkeypatch.setattr("space.kernels.lean_layers.group_deltas",
                        lambda *args: delta_calls.append(1) or real_group_deltas(*args))
    rows = measure_gated_step(base, torch.tensor([[1, 5, 6, 7]]),
                              GatedStepArgs(rank=4, mask_num=2, max_new_tokens=10, repeats=1))
    assert delta_calls  # the gated twin was decoded, through the lean layers' deltas
    assert [row["method"] for row in rows] == ["ar", "chain", "tree"]
    for row in rows:
        assert row["base_ms_per_step"] > 0 and row["gated_ms_per_step"] > 0 and row["base_steps"] >= 1
        assert len(row["runs_ms_per_step"]["base"]) == len(row["runs_ms_per_step"]["gated"]) == 1
    assert rows[0]["base_steps"] == rows[0]["gated_steps"] == 10  # AR: one token a step


def test_the_gated_step_benchmark_refuses_a_twin_whose_output_is_not_the_bases(monkeypatch):
    base, _, _ = base_and_gated(seed=12)

    def leaky_twin(model, rank, seed):  # an "adapter" that also moves real rows
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin.get_output_embeddings().weight.mul_(-1.0)
        return twin

    monkeypatch.setattr("space.bench.gated_step_cost.random_gated_twin", leaky_twin)
    with pytest.raises(RuntimeError, match="differs from the base model's AR output"):
        measure_gated_step(base, torch.tensor([[1, 5, 6, 7]]), GatedStepArgs(rank=4, mask_num=2, max_new_tokens=8,
                                                                            repeats=1))


@pytest.mark.parametrize("lean", [False, True])
def test_a_bf16_model_with_an_fp32_adapter_keeps_the_base_rows_and_adds_the_same_deltas(lean):
    """`space.load_model(..., dtype="bfloat16")` gives this mix: the base in bf16, the adapter as created (fp32)."""
    base, gated, spec = base_and_gated(seed=13)
    for model in (base, gated):
        model.to(torch.bfloat16)
    for module in gated.modules():  # the adapter back in fp32, as `add_gated_lora` creates it
        if isinstance(module, (GatedLoRA, MaskEmbeddings)):
            module.float()
    assert next(iter(gated_state_dict(gated).values())).dtype == torch.float32
    if lean:
        fast(base, gated)
    ids = torch.tensor([[1, 5, 6, *spec.group_ids(3)]])
    plain, inference = (_mask_row_logits(model, ids, train_mode=False) for model in (base, gated))
    own = _mask_row_logits(gated, ids, train_mode=True)
    assert torch.equal(inference[:, :3], plain[:, :3])
    assert torch.allclose(inference.float(), own.float(), atol=5e-2, rtol=5e-2)
    assert (inference[:, 3:6].float() - plain[:, 3:6].float()).abs().max() > 1e-1


@pytest.mark.parametrize("flag", ["--rank", "--mask_num", "--max_new_tokens", "--repeats"])
def test_the_gated_step_benchmark_refuses_a_count_below_one_in_one_line(flag):
    with pytest.raises(SpaceError, match=f"{flag} must be at least 1 \\(got 0\\)"):
        parse_gated_step_args([flag, "0"])


def test_add_ons_are_found_through_one_accessor_and_nothing_is_stashed_on_the_model():
    from space.adapters import addons
    from space.adapters.sampler_head import SamplerHead, attach

    model = tiny_llama(seed=7, mask_num=2)
    before = set(vars(model))
    assert addons(model).gate is None and addons(model).sampler_head is None and addons(model).input_only is None
    gate = add_gated_lora(model, model.config.mask_id, 1, GatedConfig(rank=4))
    head = SamplerHead(model.config.hidden_size)
    attach(model, head)
    found = addons(model)
    assert found.gate is gate and found.sampler_head is head
    assert found.input_only == slice(model.config.mask_id, model.config.mask_id + 1)
    assert set(vars(model)) == before  # no attribute of the model's own was added
    with pytest.raises(SpaceError, match="already carries a gated adapter"):
        add_gated_lora(model, model.config.mask_id, 1, GatedConfig(rank=4))
