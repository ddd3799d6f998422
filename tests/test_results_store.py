"""The evaluation's results store (issue 17): only its own files, never a foreign directory, one run at a time,
and one recovery rule for samples.jsonl (a damaged line costs its prompt; each answer counts once)."""

import json
import os

import pytest

from space.errors import SpaceError
from space.eval.datasets import EvalPrompt
from space.eval.results import CONFIG_FILE, LOCK_FILE, RUN_FILES, ResultStore, check_output_dir, settings_changes

CONFIG = {"methods": ["space", "ar"], "options": {"space": {"max_new_tokens": 12}, "ar": {"max_new_tokens": 12}},
          "dataset": "human_eval", "num_samples": 2, "quality": {"exec_timeout": 10.0}}
OTHER = dict(CONFIG, options={"space": {"max_new_tokens": 8}, "ar": {"max_new_tokens": 8}})
METHODS = ["space", "ar"]


def answer(prompt_id, method, turn=0, **extra):
    return dict(id=prompt_id, turn=turn, method=method, text=f"{prompt_id}-{method}-{turn}", **extra)


def prompts(*ids, turns=1):
    return [EvalPrompt(id=i, turns=["q"] * turns) for i in ids]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    """Issue 17 item 1: with other settings, --overwrite used to delete the whole directory tree."""
    run = tmp_path / "run"
    with ResultStore(run, CONFIG) as store:
        store.add_prompt("a", [answer("a", "space"), answer("a", "ar")])
    for name in RUN_FILES[2:]:
        (run / name).write_text("old output")
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "figure.png").write_text("mine too")
    with pytest.raises(SpaceError, match=r"other settings \(--max_new_tokens 12 -> 8\).*pass --overwrite"):
        ResultStore(run, OTHER)
    assert (run / "samples.jsonl").read_text()  # a refusal touches nothing
    with ResultStore(run, OTHER, overwrite=True) as store:
        assert store.records() == []
    assert (run / "notes.txt").read_text() == "mine" and (run / "plots" / "figure.png").read_text() == "mine too"
    assert not any((run / name).exists() for name in RUN_FILES[1:])
    assert json.loads((run / CONFIG_FILE).read_text()) == json.loads(json.dumps(OTHER))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_that_holds_no_run_is_never_adopted(tmp_path, overwrite):
    """Issue 17 item 1: `--output_dir .` with --overwrite in a fresh clone used to leave it empty, .git included."""
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / "README.md").write_text("project")
    with pytest.raises(SpaceError, match=r"is not empty \(\.git, README\.md\) and holds no evaluation run"):
        ResultStore(clone, CONFIG, overwrite=overwrite)
    assert sorted(p.name for p in clone.iterdir()) == [".git", "README.md"]  # not even a lock file was left
    # an empty directory, or one holding only the store's own names, is fine
    (tmp_path / "empty").mkdir()
    ResultStore(tmp_path / "empty", CONFIG, overwrite=overwrite).close()


def test_output_dir_that_is_a_file_is_one_clear_error(tmp_path):
    """Issue 17 item 11: a file as --output_dir used to end in a FileExistsError traceback."""
    (tmp_path / "results.txt").write_text("x")
    with pytest.raises(SpaceError, match="results.txt is a file, not a directory"):
        ResultStore(tmp_path / "results.txt", CONFIG)
    with pytest.raises(SpaceError, match="sub is inside .*results.txt, which is a file"):
        check_output_dir(tmp_path / "results.txt" / "sub")


def test_one_run_at_a_time_the_second_is_refused_with_the_first_ones_pid(tmp_path):
    """Issue 17 item 3: two runs at once wrote every answer twice, and a second one with --overwrite deleted the
    first one's directory mid-run."""
    run = tmp_path / "run"
    first = ResultStore(run, CONFIG)
    first.add_prompt("a", [answer("a", "space"), answer("a", "ar")])
    message = rf"in use by another run \(pid {os.getpid()}\); wait for it to finish or choose another " \
              "--output_dir"
    for config, overwrite in [(CONFIG, False), (OTHER, True)]:
        with pytest.raises(SpaceError, match=message):
            ResultStore(run, config, overwrite=overwrite)
        with pytest.raises(SpaceError, match=message):
            check_output_dir(run)
    assert len(first.records()) == 2 and json.loads((run / CONFIG_FILE).read_text())["options"] == CONFIG["options"]
    first.close()
    with ResultStore(run, CONFIG) as again:  # closed (or killed: the kernel drops the lock) -> free again
        assert len(again.records()) == 2
    assert (run / LOCK_FILE).is_file()


def test_damaged_lines_cost_only_their_prompts_and_each_answer_counts_once(tmp_path):
    """Issue 17 item 8: a bad line in the middle dropped every answer after it; a prompt partly written before a
    torn last line was redone while its complete records stayed (counted twice); duplicates survived reruns."""
    run = tmp_path / "run"
    ResultStore(run, CONFIG).close()
    good = {key: json.dumps(answer(*key)) for key in [(p, m) for p in "abcde" for m in METHODS]}
    write_lines(run / "samples.jsonl", [
        good["a", "space"], good["a", "ar"],
        good["b", "space"], good["b", "ar"][:20],  # b: damaged in the middle of the file
        good["c", "space"], good["c", "ar"], good["c", "ar"],  # c: written twice (two unlocked runs)
        good["d", "space"], good["d", "ar"],
        '{"id": "x"}',  # parses, but is no answer
        good["e", "space"], good["e", "ar"][:-9],  # e: partly written before a torn last line
    ])
    store = ResultStore(run, CONFIG)
    assert [(r["id"], r["method"]) for r in store.records()] == \
        [("a", "space"), ("a", "ar"), ("b", "space"), ("c", "space"), ("c", "ar"), ("d", "space"), ("d", "ar"),
         ("e", "space")]
    assert len((run / "samples.jsonl").read_text().splitlines()) == 8  # resumed: damaged lines and copies gone
    assert store.done_ids(prompts(*"abcde"), METHODS) == {"a", "c", "d"}  # exactly b and e are redone
    for prompt_id in "be":
        store.add_prompt(prompt_id, [answer(prompt_id, m, new=True) for m in METHODS])
    records = store.records()
    keys = [(r["id"], r["turn"], r["method"]) for r in records]
    assert len(keys) == len(set(keys)) == 10
    assert all(r.get("new") for r in records if r["id"] in "be")  # the partial answers were replaced, not kept
    assert len((run / "samples.jsonl").read_text().splitlines()) == 10
    store.close()


def test_a_prompt_missing_a_later_turn_is_incomplete(tmp_path):
    """Every method answered, but not every turn: before, such a prompt was neither redone nor summarized."""
    with ResultStore(tmp_path / "run", CONFIG) as store:
        store.add_prompt("a", [answer("a", m, turn) for turn in (0, 1) for m in METHODS][:-1])
        assert store.done_ids(prompts("a", turns=2), METHODS) == set()
        store.add_prompt("a", [answer("a", m, turn) for turn in (0, 1) for m in METHODS])
        assert store.done_ids(prompts("a", turns=2), METHODS) == {"a"} and len(store.records()) == 4


def test_other_quality_settings_remeasure_the_kept_answers(tmp_path):
    """pass@1 depends on --exec_timeout / --pass_at_k / --unsafe_execution: the answers stay, pass@1 is redone."""
    run = tmp_path / "run"
    with ResultStore(run, CONFIG) as store:
        store.rewrite([answer("a", m, passed=True, exec_status="passed") for m in METHODS])
    with ResultStore(run, CONFIG) as store:
        assert all(r["passed"] for r in store.records())
    with ResultStore(run, dict(CONFIG, quality={"exec_timeout": 1.0})) as store:
        assert [sorted(r) for r in store.records()] == [["id", "method", "text", "turn"]] * 2


def test_run_files_without_readable_settings_are_refused_or_replaced(tmp_path):
    run = tmp_path / "run"
    with ResultStore(run, CONFIG) as store:
        store.add_prompt("a", [answer("a", m) for m in METHODS])
    (run / CONFIG_FILE).write_text('{"methods": ')
    with pytest.raises(SpaceError, match="without readable settings .*pass --overwrite"):
        ResultStore(run, CONFIG)
    (run / CONFIG_FILE).unlink()
    with pytest.raises(SpaceError, match="holds run files \\(samples.jsonl\\) without readable settings"):
        ResultStore(run, CONFIG)
    with ResultStore(run, CONFIG, overwrite=True) as store:
        assert store.records() == []


def test_settings_changes_name_the_flags():
    assert settings_changes(CONFIG, dict(CONFIG, num_samples=5, quality={})) == []  # extends / re-measures
    assert settings_changes(CONFIG, dict(CONFIG, dataset="mt-bench", methods=["ar"], options={"ar": {}})) == \
        ["--dataset human_eval -> mt-bench", '--methods ["space", "ar"] -> ["ar"]']
