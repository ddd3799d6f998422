"""Bad input to the entry points other than `space.decode` (that one is tests/test_errors.py): one `SpaceError`
line naming the fix, raised before a model loads or a file is written.

Each case here was found by probing the API and every script with out-of-range, wrong-type and malformed values:
before the fix it was a trace from inside torch, transformers or the standard library, a run that went on with
a setting that means nothing (a negative loss weight, minus one epoch), or a silent allocation of gigabytes.
"""

import json
import runpy
from pathlib import Path

import pytest
import torch

import space
from space.eval import run_program
from space.testing import tiny_llama, tiny_tokenizer

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def one_line(call, message):
    with pytest.raises(space.SpaceError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# --- the library ---------------------------------------------------------------------------------------

LOAD_CASES = [
    (dict(dtype=torch.float8_e4m3fn), r"dtype torch.float8_e4m3fn is not supported; use one of"),
    (dict(dtype="int8"), r"unknown dtype 'int8'"),
    (dict(merge_adapter="no"), r"merge_adapter must be True or False \(got 'no'\)"),
    (dict(fast_cpu_linear="yes"), r"fast_cpu_linear must be True or False or None \(got 'yes'\)"),
    (dict(lean_layers=1), r"lean_layers must be True or False or None \(got 1\)"),
    (dict(attn_implementation=1), r"attn_implementation must be a string such as 'sdpa' \(got 1\)"),
    (dict(name_or_path=5), r"name_or_path must be a path, a hub name or None \(got 5\)"),
    (dict(adapter=["a"]), r"adapter must be a path, a hub name or None"),
    (dict(device="gpu"), r"device 'gpu' is not supported"),
]


@pytest.mark.parametrize("kwargs,message", LOAD_CASES, ids=[str(case[0]) for case in LOAD_CASES])
def test_load_model_refuses_arguments_it_cannot_use(kwargs, message, monkeypatch):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("loading started before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    one_line(lambda: space.load_model(**kwargs), message)


def fresh():
    return tiny_llama(seed=0), tiny_tokenizer()


TOKEN_CASES = [
    ("mask_num zero", lambda: space.add_mask_tokens(*fresh(), mask_num=0), r"mask_num must be a whole number >= 1"),
    ("mask_num a string", lambda: space.add_mask_tokens(*fresh(), mask_num="3"), r"\(got '3'\)"),
    ("mask_num fractional", lambda: space.add_mask_tokens(*fresh(), mask_num=2.5), r"\(got 2.5\)"),
    ("mask_id negative", lambda: space.add_mask_tokens(*fresh(), mask_id=-1),
     r"mask_id must be None or a whole number >= 0 \(got -1\)"),
    # reaching it with filler rows allocated ~10**9 embedding rows: the process was killed for memory
    ("mask_id far past the vocabulary", lambda: space.add_mask_tokens(*fresh(), mask_id=10**9),
     r"mask_id 1000000000 is far past the vocabulary \(96 tokens, 96 embedding rows\).* pick one below 1120"),
    ("mask_diff a string", lambda: space.add_mask_tokens(*fresh(), mask_diff="yes"),
     r"mask_diff must be True or False \(got 'yes'\)"),
    ("no model", lambda: space.add_mask_tokens(None, tiny_tokenizer()), r"model must be a Hugging Face model"),
    ("no tokenizer", lambda: space.add_mask_tokens(tiny_llama(), None), r"tokenizer must be a Hugging Face tokenizer"),
    ("sat_num zero", lambda: space.add_sat_tokens(*fresh(), sat_num=0), r"sat_num must be a whole number >= 1"),
    ("sat_id far past the vocabulary", lambda: space.add_sat_tokens(*fresh(), sat_id=10**9),
     r"sat_id 1000000000 is far past the vocabulary"),
]


@pytest.mark.parametrize("name,call,message", TOKEN_CASES, ids=[case[0] for case in TOKEN_CASES])
def test_placeholder_tokens_refuse_arguments_they_cannot_use(name, call, message):
    one_line(call, message)


def test_an_explicit_id_a_few_rows_past_the_vocabulary_is_still_reached_with_fillers():
    model, tokenizer = fresh()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=2, mask_id=100)  # 96..99 become fillers
    assert spec.mask_id == 100 and len(tokenizer) == 101


RUN_CASES = [
    (("print(1)", "python", dict(timeout=float("nan"))), r"timeout must be a finite number of seconds > 0 \(got nan\)"),
    (("print(1)", "python", dict(timeout=float("inf"))), r"timeout must be a finite number of seconds > 0 \(got inf\)"),
    (("print(1)", "python", dict(timeout=0)), r"timeout must be a finite number of seconds > 0 \(got 0\)"),
    (("print(1)", "python", dict(memory_mb=0)), r"memory_mb must be a whole number of MiB >= 1 \(got 0\)"),
    (("print(1)", "python", dict(isolate="no")), r"isolate must be True or False \(got 'no'\)"),
    ((None, "python", {}), r"program must be the source text, a str \(got NoneType\)"),
    (("print(1)", "cobol", {}), r"unknown language 'cobol'"),
]


@pytest.mark.parametrize("args,message", RUN_CASES, ids=[str(case[0][2] or case[0][:2]) for case in RUN_CASES])
def test_run_program_refuses_limits_it_cannot_apply(args, message):
    program, language, options = args
    one_line(lambda: run_program(program, language, **options), message)


# --- the scripts -----------------------------------------------------------------------------------------

def script_main(name):
    return runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name=name)["main"]


@pytest.fixture
def files(tmp_path):
    alpaca = tmp_path / "alpaca.json"  # SFT records, but not the distillation step's (no "id")
    alpaca.write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"{i}."} for i in range(4)]))
    return dict(alpaca=alpaca, tmp=tmp_path)


SCRIPT_CASES = [
    ("bench_step", ["--ks", "a,b"], r"--ks must be a comma list of whole numbers, at least 1 each"),  # was a trace
    ("bench_step", ["--ks", "0"], r"--ks must be a comma list"),
    ("bench_step", ["--repeats", "0"], r"--repeats must be at least 1 \(got 0\)"),  # was a trace after loading
    ("bench_step", ["--threads", "0"], r"--threads must be at least 1"),  # was silently torch's default
    ("bench_roofline", ["--threads", "-1"], r"--threads must be at least 1"),
    ("bench_train", ["--dataset", "{alpaca}", "--steps", "0"], r"--steps must be at least 1"),
    ("bench_train", ["--dataset", "{alpaca}", "--modes", "nope"], r"--modes: unknown or empty \('nope'\)"),
    ("bench_execution", ["--problems", "0"], r"^--problems must be at least 1 \(got 0\)$"),
    ("bench_execution", ["--languages", "cobol"], r"--languages takes a comma list of python"),
    ("eval_mask_accuracy", ["--data", "{alpaca}"], r"record 1 has no 'id'; pass answers written by"),
    ("export_default_model", ["--adapter_dir", "{tmp}", "--max_mb", "0"], r"--max_mb must be a size in MB above 0"),
    ("make_default_model", ["--work_dir", "{tmp}/w", "--decode_mask_num", "0"],
     r"--decode_mask_num must be at least 1"),  # the recipe started hours of work, failing at export
    ("make_default_model", ["--work_dir", "{tmp}/w", "--config", "/nonexistent"], r"--config /nonexistent not found"),
    ("make_default_model", ["--work_dir", "{tmp}/w", "--train_args", "--learning_rate -1"],
     r"--learning_rate must be a finite rate >= 0"),
    ("train_sft", ["--learning_rate", "-1"], r"--learning_rate must be a finite rate >= 0 \(got -1\)"),
    ("train_sft", ["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be at least 1"),
    ("train_sft", ["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be at least 1"),
    ("train_sft", ["--num_train_epochs", "-1"], r"--num_train_epochs must be above 0 \(got -1\), or give --max_steps"),
    ("train_sft", ["--mask_loss_weight", "-1"], r"--mask_loss_weight must be a finite weight >= 0"),
    ("train_sft", ["--mask_id", "-5"], r"--mask_id must be an id >= 0 \(got -5\)"),
    ("train_sft", ["--sdsat", "true", "--sat_id", "-1"], r"--sat_id must be an id >= 0"),
    ("generate", ["--prompt", "hi", "--do_sample", "true", "--seed", str(2**70)], r"seed must be in \["),
]


@pytest.mark.parametrize("script,argv,message", SCRIPT_CASES,
                         ids=[f"{case[0]} {' '.join(case[1])}" for case in SCRIPT_CASES])
def test_scripts_refuse_bad_flags_before_loading_a_model(script, argv, message, files, no_model_loading):
    argv = [arg.format(**files) for arg in argv]
    if script == "train_sft":
        argv += ["--dataset", str(files["alpaca"]), "--output_dir", str(files["tmp"] / "sft"), "--max_steps", "1"]
        if "--num_train_epochs" in argv:
            argv = argv[:-2]
    one_line(lambda: script_main(script)(argv), message)


@pytest.mark.parametrize("flags,message", [
    (["--do_sample", "true", "--top_p", "2"], r"top_p must be in \(0, 1\] \(got 2.0\)"),
    (["--do_sample", "true", "--temperature", "nan"], r"temperature must be finite and > 0"),
    (["--branch_width", "-1"], r"branch_width must be >= 0 \(got -1\)"),
    (["--methods", "space@0"], r"mask_num must be >= 1 \(got 0\)"),
    (["--methods", "self_spec", "--max_draft", "0"], r"max_draft must be >= 1 \(got 0\)"),
])
def test_an_evaluation_with_a_bad_option_stores_no_settings(flags, message, tmp_path, no_model_loading):
    """The options were checked at the first decode, after run_config.json was written: every later run in that
    directory, with good flags, was then refused as one "with other settings"."""
    output = tmp_path / "run"
    one_line(lambda: script_main("eval_infer")(["--output_dir", str(output), "--num_samples", "1", *flags]), message)
    assert not (output / "run_config.json").exists()


# --- files of another model, cut or foreign files ---------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model, one of another width, and a LoRA adapter of the first."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("files")
    for name, model in (("a", tiny_llama(seed=0)), ("b", tiny_llama(seed=1, hidden_size=32))):
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    get_peft_model(tiny_llama(seed=0), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(root / "lora")
    return root


def damaged_copy(saved, name, damage):
    import shutil

    target = saved / f"{name}-{damage.__name__}"
    if not target.exists():
        shutil.copytree(saved / name, target)
        damage(target)
    return target


def cut_weights(path):
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


def broken_config(path):
    (path / "config.json").write_text("{broken")


def unknown_model_type(path):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, model_type="nosuchmodel")))


def no_weights(path):
    (path / "model.safetensors").unlink()


def broken_adapter_config(path):
    (path / "adapter_config.json").write_text("{")


FILE_CASES = [
    ("cut weights", lambda s: space.load_model(str(damaged_copy(s, "a", cut_weights))), r"is damaged or truncated"),
    ("config.json not JSON", lambda s: space.load_model(str(damaged_copy(s, "a", broken_config))),
     r"could not load model .*not a valid JSON file"),
    ("unknown model_type", lambda s: space.load_model(str(damaged_copy(s, "a", unknown_model_type))),
     r"could not load model .*nosuchmodel"),
    ("no weights", lambda s: space.load_model(str(damaged_copy(s, "a", no_weights))), r"could not load model"),
    ("adapter config not JSON",
     lambda s: space.load_model(str(s / "a"), adapter=str(damaged_copy(s, "lora", broken_adapter_config))),
     r"adapter_config.json is not valid JSON"),
    ("adapter of another width", lambda s: space.load_model(str(s / "b"), adapter=str(s / "lora")),
     r"adapter .*lora does not fit this base"),
    # the shipped adapter's mask id (49152) is the SmolLM2 tokenizer's first free id: this base cannot take it
    ("shipped adapter on another base",
     lambda s: space.load_model(str(s / "a"), adapter=str(__import__("space.models").models.SHIPPED_MODEL_DIR)),
     r"adapter .*default_model does not fit this base \(mask_id 49152 is far past the vocabulary"),
]


@pytest.mark.parametrize("name,call,message", FILE_CASES, ids=[case[0] for case in FILE_CASES])
def test_files_of_another_model_and_cut_files_get_one_line(name, call, message, saved):
    one_line(lambda: call(saved), message)


def test_a_damaged_cost_curve_in_a_roofline_report_gets_one_line(tmp_path):
    from space.bench.roofline import load_cost_curve

    report = tmp_path / "roofline.json"
    for curve, found in (({"rows": [1, 2], "ms": [1.0], "context_tokens": 4}, "ValueError"),
                         ({"rows": [1], "ms": [1.0]}, "KeyError"),
                         ({"rows": [1, 2], "ms": [1.0, float("nan")], "context_tokens": 4}, "ValueError")):
        report.write_text(json.dumps({"cost_curves": {"cpu/float32": curve}}))
        one_line(lambda: load_cost_curve(report, "cpu", "float32"),
                 rf"the cost curve for cpu/float32 is damaged \({found}.*make it with")
    report.write_text(json.dumps({"cost_curves": {"cpu/float32": {"rows": [1, 8], "ms": [2.0, 3.0],
                                                                  "context_tokens": 4}}}))
    assert load_cost_curve(report, "cpu", "float32").price(8) == 1.5
