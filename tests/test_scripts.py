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
    with pytest.raises(SystemExit):
        generate.main(["--llm_dir", str(tiny_dir), "--use_cache", "maybe"])


def test_generate_script_is_the_library_comparison(tiny_dir, capsys):
    argv = ["--llm_dir", str(tiny_dir), "--prompt", "tok5 tok6", "--chat", "false", "--methods", "space,ar",
            "--max_new_tokens", "6"]
    from_library = compare(parse_compare_args(argv))
    from_script = generate.main(argv)
    assert {m: r["tokens"] for m, r in from_library.items()} == {m: r["tokens"] for m, r in from_script.items()}
    assert "=== space: 6 tokens" in capsys.readouterr().out
