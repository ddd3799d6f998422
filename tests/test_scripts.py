"""Scripts run in-process through their `main(argv)` on tiny models."""

import json
import sys
from pathlib import Path

import pytest

from space.testing import tiny_llama, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import generate  # noqa: E402


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
