"""Scripts run in-process through their `main(argv)` on tiny models."""

import json
import runpy
from pathlib import Path

import pytest

from space.eval.compare import compare, parse_compare_args
from space.testing import tiny_llama, tiny_tokenizer

GENERATE = Path(__file__).resolve().parents[1] / "scripts" / "generate.py"


class generate:
    """`scripts/generate.py`'s `main(argv)`, loaded from the file (the script is a thin wrapper of the library)."""

    @staticmethod
    def main(argv):
        return runpy.run_path(str(GENERATE), run_name="generate")["main"](argv)


@pytest.fixture
def tiny_dir(tmp_path):
    tiny_llama(seed=4, mask_num=3).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_generate_compares_methods_and_writes_json(tiny_dir, tmp_path):
    output = tmp_path / "out.json"
    results = generate.main(["--llm_dir", str(tiny_dir), "--prompt", "tok5 tok6 tok7", "--chat", "false",
                             "--methods", "space,ar,hf", "--max_new_tokens", "12", "--output", str(output)])
    assert set(results) == {"space", "ar", "hf"}
    assert all(result["identical_to_ar"] for result in results.values())
    assert len(results["space"]["tokens"]) == 12
    assert json.loads(output.read_text())["space"]["tokens"] == results["ar"]["tokens"]


def test_generate_rejects_unknown_method_and_bad_boolean(tiny_dir):
    import space

    with pytest.raises(space.SpaceError, match="unknown method 'foo'"):
        generate.main(["--llm_dir", str(tiny_dir), "--methods", "space,foo"])
    with pytest.raises(space.SpaceError, match="generate.py: argument --use_cache"):
        generate.main(["--llm_dir", str(tiny_dir), "--use_cache", "maybe"])


def test_generate_script_is_the_library_comparison(tiny_dir, capsys):
    argv = ["--llm_dir", str(tiny_dir), "--prompt", "tok5 tok6", "--chat", "false", "--methods", "space,ar",
            "--max_new_tokens", "6"]
    from_library = compare(parse_compare_args(argv))
    from_script = generate.main(argv)
    assert {m: r["tokens"] for m, r in from_library.items()} == {m: r["tokens"] for m, r in from_script.items()}
    assert "=== space: 6 tokens" in capsys.readouterr().out


def test_generate_streams_each_answer_as_it_is_decoded_and_reports_step_latency(tiny_dir, capsys):
    argv = ["--llm_dir", str(tiny_dir), "--prompt", "tok5 tok6 tok5 tok6 tok5", "--chat", "false",
            "--methods", "space,ar", "--max_new_tokens", "10"]
    results = generate.main([*argv, "--stream"])
    out = capsys.readouterr().out
    for method in ("space", "ar"):
        assert f"=== {method} (streaming)\n{results[method]['text']}\n" in out  # streamed once, not printed again
        assert 0 < results[method]["first_token_seconds"] <= results[method]["seconds"]
        assert results[method]["mean_step_seconds"] > 0
    assert out.count(results["ar"]["text"]) == 2  # both streams, nothing else


def test_burst_printer_shows_multi_token_steps_in_colour_on_a_terminal():
    import io

    import torch

    from space.eval.compare import BurstPrinter

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    printer = BurstPrinter(tiny_tokenizer(), out)
    printer.put(torch.tensor([[5, 6]]))  # the prompt: skipped
    printer.put(torch.tensor([7]))
    printer.put(torch.tensor([8, 9]))
    printer.end()
    assert out.getvalue() == "tok7\033[32m tok8 tok9\033[0m\n"


# --- what every entry point shares --------------------------------------------------------------------

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))
REQUIRED = {  # scripts with required flags: given, so that the unknown flag is the one thing wrong
    "bench_train.py": ["--dataset", "d.json"], "eval_mask_accuracy.py": ["--data", "d.jsonl"],
    "export_default_model.py": ["--adapter_dir", "a"], "merge_lora.py": ["--adapter_dir", "a", "--output_dir", "o"],
    "train_sampler_head.py": ["--model", "m", "--train_data", "t", "--held_out", "h", "--output_dir", "o"],
    "export_spec_bench.py": ["--run_dir", "r", "--answer_file", "a.jsonl"],
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_entry_point_refuses_an_unknown_flag_in_one_line(script, no_model_loading):
    """One flag parser (`space.cli.parse_flags`) for every script: an unknown flag is the same one-line error,
    before anything is loaded."""
    import space

    main = runpy.run_path(str(script), run_name=script.stem)["main"]
    with pytest.raises(space.SpaceError, match=rf"unknown flag\(s\) for {script.name}: \['--no_such_flag', '1'\]; "
                                               "see --help") as error:
        main(REQUIRED.get(script.name, []) + ["--no_such_flag", "1"])
    assert "\n" not in str(error.value)


def test_decodes_are_timed_through_timed_decode_only():
    """Every decode timing waits for the device the same way (`space.eval.harness.timed_decode`): no other function
    of the library both reads the clock and decodes."""
    import ast

    root = Path(__file__).resolve().parents[1] / "space"
    offenders = []
    for path in root.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "timed_decode":
                continue
            calls = {ast.unparse(node.func) for node in ast.walk(function) if isinstance(node, ast.Call)}
            if {"time.perf_counter", "time.monotonic", "time.time"} & calls and {"space.decode",
                                                                               "space.decode_batch"} & calls:
                offenders.append(f"{path.relative_to(root)}:{function.name}")
    assert not offenders, offenders
