"""The self-distillation step (`make_distill_data`): its flags are checked before the model loads, and a rerun
resumes only a file made with the same model and length limit."""

import json

import pytest

import space
from space.testing import tiny_llama, tiny_text_tokenizer
from space.training.distill import make_distill_data, parse_distill_args


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill") / "base"
    tokenizer = tiny_text_tokenizer()
    tiny_llama(seed=1, vocab_size=len(tokenizer), init_std=0.02).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(base, output, *extra):
    return make_distill_data(parse_distill_args(["--model", str(base), "--output", str(output), "--limit", "4",
                                                 "--max_new_tokens", "6", "--batch_size", "2", "--progress", "false",
                                                 *extra]))


@pytest.mark.parametrize("extra,message", [
    (["--limit", "0"], r"--limit must be a positive number of prompts \(got 0\); leave it out to use them all"),
    (["--limit", "-3"], r"--limit must be a positive number of prompts \(got -3\)"),
    (["--batch_size", "0"], r"--batch_size must be a positive integer \(got 0\)"),
    (["--max_new_tokens", "0"], r"--max_new_tokens must be a positive integer \(got 0\)"),
    (["--output", "DIR"], r"--output .* is a directory; name a .jsonl file \(e.g. .*distill.jsonl\)"),
    (["--instructions", "BAD_JSON"], r"--instructions .*bad.json: not valid UTF-8 JSON .*; it must be a JSON list of strings"),
    (["--instructions", "NOT_A_LIST"], r"--instructions .*list.json: expected a JSON list of non-empty strings"),
    (["--instructions", "NOT_UTF8"], r"--instructions .*latin.json: not valid UTF-8 JSON"),
    (["--instructions", "MISSING"], r"--instructions: file not found: .*missing.json"),
])
def test_bad_flags_get_one_line_before_the_model_loads(tmp_path, no_model_loading, extra, message):
    (tmp_path / "bad.json").write_text('["one", "two"')
    (tmp_path / "list.json").write_text('{"a": "b"}')
    (tmp_path / "latin.json").write_bytes('["caf\u00e9"]'.encode("latin-1"))
    values = dict(DIR=str(tmp_path), BAD_JSON=str(tmp_path / "bad.json"), NOT_A_LIST=str(tmp_path / "list.json"),
                  NOT_UTF8=str(tmp_path / "latin.json"), MISSING=str(tmp_path / "missing.json"))
    extra = [values.get(flag, flag) for flag in extra]
    with pytest.raises(space.SpaceError, match=message) as error:
        run("unused", tmp_path / "out.jsonl", *extra)
    assert "\n" not in str(error.value)


def test_rerun_with_other_settings_is_refused_and_the_same_resumes(base, tmp_path, monkeypatch):
    output = tmp_path / "distill.jsonl"
    records = run(base, output)
    assert len(records) == 4 and all(len(r["output_ids"]) <= 6 for r in records)
    settings = json.loads((tmp_path / "distill.settings.json").read_text())
    assert settings == {"model": str(base.resolve()), "max_new_tokens": 6}
    with pytest.raises(space.SpaceError, match=r"--max_new_tokens 9: .*distill.jsonl holds answers made with "
                                               r"--max_new_tokens 6 \(distill.settings.json\); pass --max_new_tokens 6 "
                                               "to continue it, or another --output to start a new file"):
        run(base, output, "--max_new_tokens", "9", "--limit", "6")
    with pytest.raises(space.SpaceError, match=r"--model .*other: .* holds answers made with --model .*base"):
        run(tmp_path / "other", output, "--limit", "6")
    def saved():
        return sorted((json.loads(line) for line in output.read_text().splitlines()), key=lambda r: r["id"])

    assert saved() == sorted(records, key=lambda r: r["id"])  # nothing added
    more = run(base, output, "--limit", "6")  # same settings: the 4 answers kept, 2 added
    assert len(more) == 6 and all(record in more for record in records)
    assert saved() == sorted(more, key=lambda r: r["id"])


def test_a_file_that_is_not_distillation_answers_is_left_alone(tmp_path, no_model_loading):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"text": "mine"}\nnot json\n')
    with pytest.raises(space.SpaceError, match="--output .*notes.jsonl exists and holds no distillation answers"):
        run("unused", notes)
    assert notes.read_text() == '{"text": "mine"}\nnot json\n'


def test_a_file_torn_in_its_first_answer_is_resumed(base, tmp_path):
    output = tmp_path / "distill.jsonl"
    (tmp_path / "distill.settings.json").write_text(json.dumps({"model": str(base.resolve()), "max_new_tokens": 6}))
    output.write_text('{"id": "stdlib/x", "instruction": "q", "outp')  # killed while appending the first batch
    assert len(run(base, output)) == 4
    assert len(output.read_text().splitlines()) == 4
