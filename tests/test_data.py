"""SFT data: templates (piecewise encoding), record formats, dataset resolution, and bad files."""

import json

import pytest

import space
from space.testing import tiny_text_tokenizer
from space.training.data import load_conversations
from space.training.templates import VICUNA_SYSTEM, get_template


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_text_tokenizer()


def enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_default_template_matches_spec_1_3(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pairs = get_template("default").encode(tokenizer, [("q1", "r1"), ("q2", "r2")])
    first_source = ([bos] + enc(tokenizer, VICUNA_SYSTEM) + enc(tokenizer, "\n")
                    + enc(tokenizer, "Human: q1\nAssistant: "))
    assert pairs[0] == (first_source, enc(tokenizer, "r1") + [eos])
    assert pairs[1] == (enc(tokenizer, "\n") + [bos] + enc(tokenizer, "Human: q2\nAssistant: "),
                        enc(tokenizer, "r2") + [eos])


def test_vicuna_template_and_custom_system(tokenizer):
    bos = tokenizer.bos_token_id
    pairs = get_template("vicuna").encode(tokenizer, [("hi", "yo"), ("a", "b")], system="Be brief.")
    assert pairs[0][0] == [bos] + enc(tokenizer, "Be brief.") + enc(tokenizer, "USER: hi ASSISTANT: ")
    assert pairs[1][0] == [bos] + enc(tokenizer, "USER: a ASSISTANT: ")


def test_chat_template_pieces_rebuild_the_rendered_conversation(tokenizer):
    turns = [("Add 2 and 3.", "5"), ("And 4?", "9")]
    pairs = get_template("chat_template").encode(tokenizer, turns)
    rendered = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for q, a in turns for r, c in (("user", q), ("assistant", a))], tokenize=False)
    assert tokenizer.decode([i for source, target in pairs for i in source + target]) == rendered
    assert tokenizer.decode(pairs[0][1]) == "5</s>\n"


def test_unknown_template_is_refused():
    with pytest.raises(space.SpaceError, match="unknown template 'alpaca'"):
        get_template("alpaca")


def write(path, records, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


def test_alpaca_input_and_history(tmp_path):
    path = write(tmp_path / "a.json", [
        {"instruction": "Translate", "input": "bonjour", "output": "hello", "history": [["hi", "hey"]]},
        {"instruction": "Empty", "input": "", "output": ""},  # dropped: empty response
    ])
    [conversation] = load_conversations(str(path))
    assert conversation.turns == [("hi", "hey"), ("Translate\nbonjour", "hello")]


def test_sharegpt_variants_and_jsonl(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"},
                           {"from": "gpt", "value": "a"}]},
        {"conversations": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
        {"conversations": ["q3", "a3", "q4", "a4"]},
    ], jsonl=True)
    conversations = load_conversations(str(path))
    assert [c.turns for c in conversations] == [[("q", "a")], [("q2", "a2")], [("q3", "a3"), ("q4", "a4")]]
    assert conversations[0].system == "S"


def test_registry_name_resolves_to_dataset_dir(tmp_path):
    write(tmp_path / "lima.json", [{"instruction": "q", "input": "", "output": "a"}])
    assert load_conversations("lima", tmp_path)[0].turns == [("q", "a")]
    write(tmp_path / "mine.json", [{"instruction": "x", "input": "", "output": "y"}])
    assert len(load_conversations("lima,mine.json", tmp_path)) == 2


@pytest.mark.parametrize("content,message", [
    ("[{\"instruction\": \"q\", ", r"bad\.json: not valid JSON"),
    ("{\"instruction\": \"q\"}", r"bad\.json: expected a JSON list"),
    ("[{\"prompt\": \"q\"}]", r"bad\.json: record 0 is neither alpaca"),
    ("[{\"instruction\": \"q\", \"output\": \"a\"}, 5]", r"bad\.json: record 1 is a int"),
    ("[{\"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}]}]", r"record 0 does not alternate"),
])
def test_malformed_files_name_the_file_and_record(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(space.SpaceError, match=message) as error:
        load_conversations(str(tmp_path / "bad.json"))
    assert "\n" not in str(error.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(space.SpaceError, match="dataset file not found: nothere.json"):
        load_conversations("nothere.json", tmp_path)
    with pytest.raises(space.SpaceError, match="unknown dataset 'wikitext'"):
        load_conversations("wikitext", tmp_path)


def test_registry_name_without_local_file_and_no_hub_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(space.SpaceError,
                       match=r"alpaca_gpt4_data_en\.json does not exist and the hub dataset") as error:
        load_conversations("alpaca_gpt4_en", tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["default", "chat_template"])
def test_unfinished_answer_is_trained_without_its_end_of_turn(tokenizer, name):
    turns = [("Add 2 and 3.", "5"), ("Count to ten.", "1 2 3 4")]
    finished = get_template(name).encode(tokenizer, turns)
    cut = get_template(name).encode(tokenizer, turns, unfinished=True)
    assert cut[0] == finished[0] and cut[1][0] == finished[1][0]  # earlier turns and prompts unchanged
    assert cut[1][1] == enc(tokenizer, "1 2 3 4")
    assert tokenizer.eos_token_id in finished[1][1] and tokenizer.eos_token_id not in cut[1][1]


def test_unfinished_flag_is_read_from_records(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        {"instruction": "a", "output": "b", "unfinished": True},
        {"instruction": "c", "output": "d"},
    ], jsonl=True)
    assert [c.unfinished for c in load_conversations(str(path))] == [True, False]
