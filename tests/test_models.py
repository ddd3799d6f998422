"""Model loading: HF directories, dtypes, peft adapters (merged or not), and bad paths."""

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

import space
from space.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def saved_tiny(tmp_path):
    model = tiny_llama(seed=3)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    return model, tmp_path / "base"


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_load_directory_keeps_weights_and_mask_fields(saved_tiny):
    original, path = saved_tiny
    model, tokenizer = space.load_model(path, fast_cpu_linear=False)
    ids = torch.tensor([[4, 5, 6, 7]])
    assert torch.allclose(logits(model, ids), logits(original, ids), atol=1e-6)
    fast, _ = space.load_model(path)  # CPU default: the same weights, products in another rounding order
    assert torch.allclose(logits(fast, ids), logits(original, ids), rtol=1e-4, atol=1e-4)
    assert space.read_mask_spec(model.config) == space.read_mask_spec(original.config)
    assert len(tokenizer) == 96 and not model.training


def test_load_in_bfloat16(saved_tiny):
    _, path = saved_tiny
    model, _ = space.load_model(path, dtype="bf16")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_auto_dtype_is_the_measured_choice_per_device(saved_tiny):
    from space.models import AUTO_DTYPES, resolve_dtype

    assert resolve_dtype("auto", "cpu") == AUTO_DTYPES["cpu"] == torch.float32  # bf16 breaks identity on this CPU
    assert resolve_dtype("auto", "cuda:1") == AUTO_DTYPES["cuda"]
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    model, _ = space.load_model(saved_tiny[1])  # the default is auto
    assert model.get_input_embeddings().weight.dtype == AUTO_DTYPES["cpu"]


@pytest.mark.parametrize("merge", [True, False])
def test_adapter_on_top_of_base_gives_the_peft_logits(saved_tiny, tmp_path, merge):
    base, path = saved_tiny
    peft_model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)  # B starts at zero; make the adapter change something
    peft_model.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = space.load_model(path, adapter=tmp_path / "adapter", merge_adapter=merge)
    # peft reads a deprecated transformers alias while wrapping; the user cannot act on that warning
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    ids = torch.tensor([[4, 5, 6, 7]])
    expected = logits(peft_model.eval(), ids)
    assert not torch.allclose(expected, logits(base, ids), atol=1e-3)
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)
    assert space.decode(model, ids, "space", max_new_tokens=10).tokens.tolist() == \
        space.decode(model, ids, "ar", max_new_tokens=10).tokens.tolist()


def test_bad_paths_give_one_line_errors(tmp_path, saved_tiny):
    _, path = saved_tiny
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(name_or_path=tmp_path / "missing"), "model path not found"),
        (dict(name_or_path=tmp_path / "empty"), "is not a model directory"),
        (dict(name_or_path=tmp_path / "missing.gguf"), "GGUF file not found"),
        (dict(name_or_path=path, adapter=tmp_path / "empty"), "is not a peft adapter directory"),
        (dict(name_or_path=path, dtype="float8"), "unknown dtype"),
    ]
    for kwargs, message in cases:
        with pytest.raises(space.SpaceError, match=message) as error:
            space.load_model(**kwargs)
        assert "\n" not in str(error.value)


def test_adapter_recording_the_base_alias_loads_the_embedded_base(saved_tiny, tmp_path, monkeypatch):
    """An adapter trained on `--model_name_or_path smollm2` records that alias as its base; loading the
    adapter directory must resolve it to the embedded GGUF, not ask the hub for a model named smollm2."""
    import json

    import space.models as models

    _, path = saved_tiny
    peft_model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / models.ADAPTER_FIELDS_FILE).write_text(json.dumps({"base_model": "smollm2"}))
    located = []
    real_locate = models._locate

    def locate(name_or_path):
        located.append(name_or_path)
        return real_locate(path) if name_or_path is None else real_locate(name_or_path)

    monkeypatch.setattr(models, "_locate", locate)
    model, _ = space.load_model(tmp_path / "adapter")
    assert located == [None]  # None = the embedded default base
    assert model.get_input_embeddings().weight.shape[0] == 96


def test_decoding_k_of_space_json_depends_on_the_device():
    from space.models import decode_mask_num

    saved = {"mask_num": 6, "decode_mask_num": 3, "decode_mask_num_cuda": 6}
    assert decode_mask_num(saved, "cpu") == 3 and decode_mask_num(saved, "cuda") == 6
    assert decode_mask_num({"mask_num": 6, "decode_mask_num": 2}, "cuda") == 2  # no GPU entry: the one k
    assert decode_mask_num({"mask_num": 6}, "cuda") is None
    with pytest.raises(space.SpaceError, match="decode_mask_num_cuda 7 must be between 1 and the trained mask_num 6"):
        decode_mask_num({"mask_num": 6, "decode_mask_num_cuda": 7}, "cuda")


def test_trained_width_and_decoding_k_are_kept_apart(saved_tiny, tmp_path, monkeypatch):
    """`mask_num` stays the trained width; `decode_mask_num` (from space.json) is the default k, and a merged,
    saved copy keeps both."""
    import json

    import space.decoding.space as space_decoding
    import space.models as models
    from space.tokens import record_mask_spec, resolve_mask_spec

    _, path = saved_tiny
    peft_model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer().save_pretrained(tmp_path / "adapter")
    fields = {"base_model": str(path), "mask_id": 95, "mask_num": 5, "mask_diff": False, "decode_mask_num": 3}
    (tmp_path / "adapter" / models.ADAPTER_FIELDS_FILE).write_text(json.dumps(fields))
    used = []

    def recording(*args):
        spec = resolve_mask_spec(*args)
        used.append(spec.mask_num)
        return spec

    monkeypatch.setattr(space_decoding, "resolve_mask_spec", recording)
    model, tokenizer = space.load_model(tmp_path / "adapter")
    assert (model.config.mask_num, model.config.decode_mask_num) == (5, 3)
    ids = torch.tensor([[4, 5, 6, 7]])
    default = space.decode(model, ids, "space", max_new_tokens=10)
    assert used == [3] and default.tokens.tolist() == space.decode(model, ids, "ar", max_new_tokens=10).tokens.tolist()
    space.decode(model, ids, "space", max_new_tokens=10, mask_num=5)  # the whole trained width still decodes
    assert used == [3, 5]

    model.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    reloaded, _ = space.load_model(tmp_path / "merged")
    assert (reloaded.config.mask_num, reloaded.config.decode_mask_num) == (5, 3)
    assert space.read_mask_spec(reloaded.config) == space.MaskSpec(95, 3, False)  # the spec it decodes with
    record_mask_spec(reloaded.config, space.MaskSpec(95, 4, False))  # a new width: its decoding default goes
    assert space.read_mask_spec(reloaded.config).mask_num == 4 and not hasattr(reloaded.config, "decode_mask_num")


# --- damaged or incomplete files, devices, the base an adapter names (issue 17) -------------------


def save_adapter(directory, seed=3, **model_options):
    peft_model = get_peft_model(tiny_llama(seed=seed, **model_options),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    peft_model.save_pretrained(directory)
    return directory


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def one_line_error(match, call):
    with pytest.raises(space.SpaceError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_a_truncated_weights_file_is_named(saved_tiny, tmp_path):
    """A kill during a save leaves a truncated .safetensors: one line naming the file, for a model (a
    training checkpoint is one), an adapter, and a model directory given as an adapter's base."""
    import shutil

    _, path = saved_tiny
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(path, checkpoint)
    truncate(checkpoint / "model.safetensors")
    one_line_error(rf"model weights file {checkpoint / 'model.safetensors'} is damaged or truncated \(.*\); it was not "
                   "fully written", lambda: space.load_model(checkpoint))
    adapter = save_adapter(tmp_path / "adapter")
    truncate(adapter / "adapter_model.safetensors")
    one_line_error(rf"adapter weights file {adapter / 'adapter_model.safetensors'} is damaged or truncated",
                   lambda: space.load_model(path, adapter=adapter))
    (checkpoint / "model.safetensors").write_bytes(b"")
    one_line_error("model weights file .* is damaged or truncated", lambda: space.load_model(checkpoint))


def test_an_adapter_without_its_weights_says_what_is_missing(saved_tiny, tmp_path):
    """Without adapter_model.safetensors peft took the directory for a hub name ("Repo id must be a string")."""
    _, path = saved_tiny
    adapter = save_adapter(tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    message = (rf"adapter {adapter} has adapter_config.json but no weights \(adapter_model.safetensors or "
               r"adapter_model.bin\); its save did not finish")
    one_line_error(message, lambda: space.load_model(path, adapter=adapter))
    one_line_error(message, lambda: space.load_model(adapter))  # checked before any base is loaded


@pytest.mark.parametrize("name,content,message", [
    ("space.json", b"{bad", r"space.json is not valid JSON \(Expecting property name"),
    ("space.json", b"[1, 2]", r"space.json must hold a JSON object, not a list"),
    ("space.json", b"\xff\xfe{}", r"space.json is not UTF-8 text"),
    ("space.json", b'{"mask_id": "x"}', r"space.json: mask_id must be an integer or null \(got 'x'\)"),
    ("space.json", b'{"mask_diff": "false"}', r"space.json: mask_diff must be true or false or null"),
    ("adapter_config.json", b"{bad", r"adapter_config.json is not valid JSON"),
])
def test_a_malformed_adapter_file_is_one_line(saved_tiny, tmp_path, name, content, message):
    _, path = saved_tiny
    adapter = save_adapter(tmp_path / "adapter")
    (adapter / name).write_bytes(content)
    one_line_error(message + ".*; re-export the adapter", lambda: space.load_model(path, adapter=adapter))


@pytest.mark.parametrize("device", ["gpu", "mps", "tpu", "cuda0"])
def test_an_unsupported_device_names_the_valid_ones(device):
    one_line_error(rf"device '{device}' is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'",
                   lambda: space.models.resolve_device(device))


def test_a_cuda_index_past_the_devices_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    one_line_error(r"device 'cuda:2' does not exist: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1",
                   lambda: space.models.resolve_device("cuda:2"))
    assert space.models.resolve_device("cuda:1") == torch.device("cuda:1")


def test_an_adapter_on_another_base_than_its_space_json_names_warns(saved_tiny, tmp_path):
    import json
    import warnings

    _, path = saved_tiny
    other = tmp_path / "other"
    tiny_llama(seed=4).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    adapter = save_adapter(tmp_path / "adapter")
    (adapter / "space.json").write_text(json.dumps({"base_model": str(path)}))
    with pytest.warns(space.SpaceWarning, match=rf"adapter {adapter} was trained on '{path}' \(its space.json\) but "
                                                rf"is loaded onto '{other}'; pass that base"):
        space.load_model(other, adapter=adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", space.SpaceWarning)
        space.load_model(str(path) + "/", adapter=adapter)  # the same directory, spelled otherwise
        space.load_model(adapter)  # the base it names
        (adapter / "space.json").write_text(json.dumps({"base_model": "/elsewhere/base"}))
        space.load_model(path, adapter=adapter)  # recorded on another machine: a directory of the same name
    (adapter / "space.json").write_text(json.dumps({"base_model": None}))
    with pytest.warns(space.SpaceWarning, match=r"was trained on the embedded SmolLM2 base .* loaded onto '"):
        space.load_model(path, adapter=adapter)


def test_an_adapter_that_does_not_fit_the_base_is_one_line(saved_tiny, tmp_path):
    _, path = saved_tiny
    adapter = save_adapter(tmp_path / "adapter", hidden_size=32)
    one_line_error(rf"adapter {adapter} does not fit this base \(.*\); load it onto the base it was trained on",
                   lambda: space.load_model(path, adapter=adapter))


def test_wrapping_a_model_for_lora_training_prints_no_peft_alias_warning():
    from space.training.arguments import FinetuningArguments
    from space.training.recipe import wrap_lora

    model = tiny_llama(seed=3, mask_num=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = wrap_lora(model, FinetuningArguments(finetuning_type="lora", lora_rank=4),
                            space.read_mask_spec(model.config))
    assert any("lora_A" in name for name, _ in wrapped.named_parameters())
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
