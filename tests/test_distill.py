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
    (["--limit", "0"], r"--limit must be at least 1 \(got 0\); leave it out to use them all"),
    (["--limit", "-3"], r"--limit must be at least 1 \(got -3\)"),
    (["--batch_size", "0"], r"--batch_size must be at least 1 \(got 0\)"),
    (["--max_new_tokens", "0"], r"--max_new_tokens must be at least 1 \(got 0\)"),
    (["--output", "DIR"], r"--output .* is a directory; name a .jsonl file \(e.g. .*distill.jsonl\)"),
    (["--instructions", "BAD_JSON"],
     r"--instructions .*bad.json: not valid UTF-8 JSON .*; it must be a JSON list of strings"),
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


# --- the prompt families beyond coding (space.training.distill_prompts) ---------------------------------------

from space.training import distill_prompts  # noqa: E402
from space.training.distill import FIRST_STAGE, Contamination, _messages, build_prompts  # noqa: E402


def test_first_stage_families_are_thousands_of_distinct_prompts_with_stable_ids():
    families = distill_prompts.read_families()
    first = distill_prompts.instruction_prompts(families) + distill_prompts.math_prompts(families)
    again = distill_prompts.instruction_prompts(families) + distill_prompts.math_prompts(families)
    assert first == again  # a rerun builds the same prompts under the same ids: the answer file resumes
    ids = [p["id"] for p in first]
    assert len(set(ids)) == len(ids) and len({p["prompt"] for p in first}) == len(first)
    made = {family: sum(p["family"] == family for p in first)
            for family in (*distill_prompts.INSTRUCTION_FAMILIES, "math")}
    assert all(0 < made[family] <= distill_prompts.COUNTS[family] for family in made)
    assert not any("{" in p["prompt"] for p in first)  # every slot was filled
    prompts, dropped = build_prompts([], families=list(FIRST_STAGE))
    assert len(prompts) > 2000 and dropped < 50


def test_second_stage_is_built_from_finished_prose_answers():
    def record(id, text, tokens=100, unfinished=False):
        return dict(id=id, instruction=f"request {id}", output=text, output_ids=list(range(tokens)),
                    unfinished=unfinished)

    prose = "Tides rise twice a day. The moon pulls the sea. The sun helps a little. Storms change it too."
    records = [record(f"passages/0/{i}", prose) for i in range(4)]
    records += [record("explain/1/1", prose, unfinished=True), record("howto/2/2", "Do this:\n```\nx = 1\n```"),
                record("tips/0/0", prose, tokens=20), record("stdlib/json.dumps", "def dumps(obj): ...", tokens=80)]
    derived = distill_prompts.derived_prompts(records, distill_prompts.read_families())
    by_family = {}
    for prompt in derived:
        by_family.setdefault(prompt["family"], []).append(prompt)
    assert set(by_family) == set(distill_prompts.DERIVED_FAMILIES)
    for family in ("summary", "passage_qa", "translation"):
        assert {p["id"].split("/", 1)[1].rsplit("/", 1)[0] if family != "summary" else p["id"].split("/", 1)[1]
                for p in by_family[family]} <= {f"passages/0/{i}" for i in range(4)}
    for prompt in by_family["translation"]:
        assert "Storms change it too." not in prompt["prompt"]  # the first three sentences only
    chats = {p["history"][0][0]: p for p in by_family["two_turn"]}
    assert "request stdlib/json.dumps" in chats
    assert chats["request stdlib/json.dumps"]["prompt"] in distill_prompts.read_families()["two_turn"]["coding"]
    assert not any("explain/1/1" in p["id"] or "howto/2/2" in p["id"] for p in derived)  # unfinished, code


def test_contamination_covers_the_general_evaluation_prompts_and_histories():
    filters = Contamination.of_evaluation_sets()
    general = space.eval.datasets.load_eval_dataset("general", execute=False)[0].turns[0]
    quoted = " ".join(general.split()[5:20])
    assert filters.flags(dict(id="x", prompt=f"Please summarize: {quoted}"))
    assert filters.flags(dict(id="x", prompt="Shorter?", history=[[f"Tell me: {quoted}", "ok"]]))
    assert not filters.flags(dict(id="x", prompt="Explain how tides work in simple terms."))
    assert filters.flags(dict(id="x", prompt="Write it.", entry_point="has_close_elements"))


def test_a_chat_prompt_is_rendered_with_its_history_first():
    prompt = dict(id="two_turn/a", prompt="Shorter?", history=[["Explain tides.", "Tides come from the moon."]])
    assert _messages(prompt) == [{"role": "user", "content": "Explain tides."},
                                 {"role": "assistant", "content": "Tides come from the moon."},
                                 {"role": "user", "content": "Shorter?"}]
    assert _messages(dict(id="b", prompt="Hi")) == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("families,message", [("coding,poetry", "--families: unknown or empty \\(poetry\\)"),
                                              (",", "--families: unknown or empty \\(none given\\)"),
                                              ("summary", "the second stage is built from answers of the first")])
def test_unknown_families_get_one_line(tmp_path, no_model_loading, families, message):
    with pytest.raises(space.SpaceError, match=message):
        run("unused", tmp_path / "out.jsonl", "--families", families)


def test_derived_prompts_share_the_root_of_the_answer_they_quote():
    from space.training.default_model import is_held_out

    assert distill_prompts.root_id("summary/explain/3/1") == "explain/3/1"
    assert distill_prompts.root_id("passage_qa/passages/4/0/7") == "passages/4/0"
    assert distill_prompts.root_id("two_turn/stdlib/json.dumps/2") == "stdlib/json.dumps"
    assert distill_prompts.root_id("translation/writing/1/2/3/French") == "writing/1/2/3"
    assert distill_prompts.root_id("math/3/17") == "math/3/17"
    held = next(f"explain/{i}/0" for i in range(200) if is_held_out(f"explain/{i}/0"))
    assert is_held_out(f"summary/{held}") and is_held_out(f"two_turn/{held}/3")
