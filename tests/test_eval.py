"""Evaluation harness: metric math, ROUGE-L, dataset loaders, prompt strings, and the CLI in-process."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import transformers

import space
from space.eval import evaluate
from space.eval.datasets import ORIGINAL_HUMANEVAL_INSTRUCTION, EvalPrompt, load_eval_dataset
from space.eval.flags import EvalArgs, parse_eval_args
from space.eval.metrics import method_summary, original_metrics, repetition_ratio, summarize
from space.eval.prompts import render
from space.eval.report import summary_table
from space.eval.rouge import rouge_l
from space.testing import tiny_llama, tiny_text_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_eval(argv: list[str]) -> dict:
    """What `scripts/eval_infer.py` does with `argv`, without the printing."""
    return evaluate(parse_eval_args(argv))


def record(method, prompt_id, ids, seconds, per_step, text="a b c", turn=0, category=None):
    return dict(id=prompt_id, turn=turn, method=method, ids=ids, text=text, seconds=seconds, steps=len(per_step),
                tokens_per_step=per_step, category=category)


RECORDS = [
    record("ar", "p1", [1, 2, 3, 4], 4.0, [1, 1, 1, 1], category="code"),
    record("ar", "p2", [5, 6], 2.0, [1, 1], category="chat"),
    record("space", "p1", [1, 2, 3, 4], 1.0, [1, 3], category="code"),
    record("space", "p2", [5, 7], 2.0, [1, 1], category="chat"),
]


def test_clean_metrics_on_synthetic_records():
    summary = summarize(RECORDS)
    ar, sp = summary["methods"]["ar"], summary["methods"]["space"]
    assert ar["tokens_per_second"] == 1.0 and sp["tokens_per_second"] == 2.0
    assert sp["speedup_vs_ar"] == 2.0 and ar["speedup_vs_ar"] == 1.0
    assert sp["avg_tokens_per_step"] == 1.5 and sp["target_forwards"] == 4
    assert sp["identity_rate"] == 0.5  # p2 differs in its last token
    assert sp["tokens_per_step_histogram"] == {"1": 3, "3": 1}
    assert summary["categories"]["code"]["space"]["speedup_vs_ar"] == 4.0


def test_tree_records_report_rows_and_the_branch_of_each_accepted_token():
    tree = dict(record("space", "p1", [1, 2, 3, 4, 5, 6], 1.0, [4, 2]), accepted_per_step=[3, 1], rows_per_step=[10, 6],
                copy_accepted_per_step=[2, 0], topk_accepted_per_step=[0, 1])
    summary = summarize([RECORDS[0], tree])
    space_summary = summary["methods"]["space"]
    assert space_summary["avg_rows_per_step"] == 8.0
    assert space_summary["accepted_per_step_by_branch"] == {"chain": 0.5, "copy": 1.0, "topk": 0.5}
    assert "avg_rows_per_step" not in summary["methods"]["ar"]
    table = summary_table(summary)
    assert "rows/step" in table and "0.50, 1.00, 0.50" in table


def test_original_metrics_on_synthetic_records():
    count = lambda text: len(text.split()) + 1  # noqa: E731  (stands in for len(encode(text)) + 1)
    report = original_metrics([r for r in RECORDS if r["method"] == "space"],
                              [r for r in RECORDS if r["method"] == "ar"], count, max_steps=4)
    assert report["time_percentage"] == round(1.5 / 3.0, 4)
    assert report["speedup_sum"] == round((8 / 3) / (8 / 6), 4)
    assert report["speedup_avg"] == round(((4 / 1 + 4 / 2) / 2) / ((4 / 4 + 4 / 2) / 2), 4)
    assert report["avg_num_of_tokens"] == 1.5
    assert report["histogram"] == {"1": [3, 0.75], "2": [0, 0.0], "3": [1, 0.25], "4": [0, 0.0]}
    assert report["filtered"]["kept"] == 2


def test_the_original_histogram_lists_every_step_a_tree_makes():
    """A tree step can emit more than k+1 tokens (a copy runs on past the chain): the histogram lists it too, so
    the fractions sum to one."""
    space_records = [dict(r, tokens_per_step=[1, 7]) if r["method"] == "space" and r["id"] == "p1" else r
                     for r in RECORDS if r["method"] == "space"]
    report = original_metrics(space_records, [r for r in RECORDS if r["method"] == "ar"],
                              lambda text: len(text.split()) + 1, max_steps=4)
    counts = {int(n): count for n, (count, _) in report["histogram"].items()}
    assert sum(counts.values()) == report["num_infer"] and counts[7] == 1 and sorted(counts) == list(range(1, 8))
    assert sum(fraction for _, fraction in report["histogram"].values()) == pytest.approx(1.0)


def test_repetition_filter_drops_degenerate_baseline_answers():
    assert repetition_ratio("the the the the the the the the") > 3.5
    assert repetition_ratio("a quick brown fox jumps") < 3.5
    rows = [record("ar", "p", [1], 1.0, [1], text="go " * 20), record("space", "p", [1], 1.0, [1], text="go " * 20)]
    report = original_metrics(rows[1:], rows[:1], lambda t: 1)
    assert report["filtered"] == {"kept": 0, "of": 1}


def test_method_summary_of_nothing_is_safe():
    assert method_summary([])["tokens_per_second"] is None


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "anything") == 0.0
    # LCS("the cat was on the mat", "the cat sat on the mat") = 5 of 6 words each side
    assert abs(rouge_l("the cat was on the mat", "the cat sat on the mat") - 5 / 6) < 1e-9


def test_rouge_l_tokens_keep_every_script_and_identifiers():
    """Why not rouge-score's tokenizer (see space/eval/rouge.py): these are the scores it would change."""
    assert rouge_l("Zoë Ball left São Paulo café", "Zoë Ball left São Paulo") == pytest.approx(10 / 11)
    assert rouge_l("Кошка сидела на коврике", "Кошка сидела на коврике") == 1.0
    assert rouge_l("猫坐在垫子上", "猫坐在垫子上") == 1.0
    assert rouge_l("call foo_bar now", "call foo bar now") == pytest.approx(4 / 7)


def test_humaneval_loaders_use_vendored_files():
    prompts = load_eval_dataset("human_eval")
    assert len(prompts) == 164 and prompts[0].id == "Python/0"
    assert prompts[0].turns[0].startswith(ORIGINAL_HUMANEVAL_INSTRUCTION + "\nfrom typing import List")
    assert "end with '``'" in prompts[0].turns[0]  # the original's typo is kept in the faithful dataset
    for language in ("python", "cpp", "java", "js", "go"):
        prompts = load_eval_dataset(f"humaneval-x-{language}", num_samples=3)
        assert len(prompts) == 3 and prompts[0].language == language and prompts[0].problem["test"]


def test_other_loaders_read_local_files(tmp_path):
    (tmp_path / "mt.jsonl").write_text(json.dumps({"question_id": 81, "category": "writing",
                                                   "turns": ["a", "b"]}) + "\n")
    (tmp_path / "cip.jsonl").write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(150)))
    (tmp_path / "xsum.json").write_text(json.dumps([{"id": "x1", "document": "long text", "summary": "short"}]))
    [mt] = load_eval_dataset("mt-bench", str(tmp_path / "mt.jsonl"))
    assert mt.turns == ["a", "b"] and mt.category == "writing" and mt.id == "81"
    assert len(load_eval_dataset("cip", str(tmp_path / "cip.jsonl"))) == 100  # the original's first 100
    [xsum] = load_eval_dataset("xsum", str(tmp_path / "xsum.json"))
    assert xsum.reference == "short" and xsum.turns[0].endswith("long text")


@pytest.mark.parametrize("name,path,message", [
    ("gsm8k", None, "unknown dataset 'gsm8k'"),
    ("mt-bench", None, "is not vendored: pass --data_path"),
    ("cip", "missing.jsonl", "data file not found: missing.jsonl"),
])
def test_loader_errors(name, path, message):
    with pytest.raises(space.SpaceError, match=message):
        load_eval_dataset(name, path)


def test_original_llama_prompt_strings():
    single = render([("Hi", None)], "original", "llama")
    assert single.endswith("questions.\nHuman:Hi\nAssistant:")
    double = render([("Hi", "Hello!"), ("More", None)], "original", "llama")
    assert double == single + "\nHello!\nHuman:More\nAssistant:"
    assert render([("Hi", None)], "original", "chatglm") == "[Round 0]\n\n问：Hi\n\n答："
    assert render([("Hi", None)], "original", "llama-2-chat").startswith("[INST]<<SYS>>")


def test_chat_template_prompt_style():
    tokenizer = tiny_text_tokenizer()
    assert render([("Hi", "Yo"), ("Again", None)], "chat_template", tokenizer=tokenizer) == \
        "<s>user\nHi</s>\n<s>assistant\nYo</s>\n<s>user\nAgain</s>\n<s>assistant\n"


# --- the CLI, in-process on a tiny model -------------------------------------------------------

@pytest.fixture
def tiny_dir(eval_model_dir):
    return eval_model_dir


def cli(tiny_dir, output, *extra):
    return ["--llm_dir", str(tiny_dir), "--dataset", "human_eval", "--num_samples", "2", "--max_new_tokens", "12",
            "--methods", "space,ar,hf,prompt_lookup", "--output_dir", str(output), "--progress", "false", *extra]


def test_cli_writes_well_formed_outputs_and_resumes(tiny_dir, tmp_path):
    summary = run_eval(cli(tiny_dir, tmp_path / "run"))
    for name in ("samples.jsonl", "summary.json", "summary.md", "summary.png", "token_dict.csv", "res_dict.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["dataset"] == "human_eval" and saved["num_samples"] == 2
    assert saved["versions"]["transformers"] == transformers.__version__ and saved["versions"]["torch"]
    for method in ("space", "ar", "hf", "prompt_lookup"):
        values = saved["methods"][method]
        for key in ("tokens_per_second", "speedup_vs_ar", "avg_tokens_per_step", "identity_rate", "pass@1"):
            assert key in values, (method, key)
        assert values["identity_rate"] == 1.0  # greedy: every method reproduces AR
    assert saved["methods"]["space"]["avg_rows_per_step"] >= 1 and \
        "accepted_per_step_by_branch" in saved["methods"]["space"]
    assert summary["original"]["space_vs_ar"]["time_percentage"] > 0
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all("passed" in json.loads(line) for line in lines)
    # the same command again: nothing is recomputed
    run_eval(cli(tiny_dir, tmp_path / "run"))
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 8


def test_batched_evaluation_times_batches_and_gives_every_prompt_its_one_prompt_answer(tiny_dir, tmp_path):
    """--batch_size 3 on 5 prompts: space and ar decode three rows per call (then two), prompt_lookup one prompt at
    a time; every answer equals the one-prompt run's, the totals are the wall time of the calls, a rerun resumes
    and another batch size is refused for the same directory."""
    flags = ["--num_samples", "5", "--methods", "space,ar,prompt_lookup", "--pass_at_k", "false"]
    single = run_eval(cli(tiny_dir, tmp_path / "one", *flags))
    batched = run_eval(cli(tiny_dir, tmp_path / "three", *flags, "--batch_size", "3"))
    read = {name: [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
            for name in ("one", "three")}
    ids = {name: {(r["id"], r["method"]): r["ids"] for r in records} for name, records in read.items()}
    assert ids["three"] == ids["one"]
    for record in read["three"]:
        if record["method"] == "prompt_lookup":
            assert "batch_seconds" not in record
        else:
            assert record["batch_size"] in (3, 2)
            assert record["seconds"] == pytest.approx(record["batch_seconds"] / record["batch_size"], abs=1e-4)
    for method in ("space", "ar"):
        assert batched["methods"][method]["mean_batch_size"] == pytest.approx((3 * 3 + 2 * 2) / 5)
        assert batched["methods"][method]["identity_rate"] == 1.0
        assert "mean_batch_size" not in single["methods"][method]
    assert batched["methods"]["ar"]["batch1_ar_identity_rate"] == 1.0  # each batched AR row is its batch-1 answer
    assert all(r["equals_batch1_ar"] for r in read["three"] if r["method"] == "ar")
    assert "batch1_ar_identity_rate" not in batched["methods"]["space"]
    run_eval(cli(tiny_dir, tmp_path / "three", *flags, "--batch_size", "3"))  # nothing decoded again
    assert len((tmp_path / "three" / "samples.jsonl").read_text().splitlines()) == 15
    with pytest.raises(space.SpaceError, match="batch_size"):
        run_eval(cli(tiny_dir, tmp_path / "three", *flags, "--batch_size", "2"))


def test_cli_explains_answers_that_differ_from_ar(tiny_dir, tmp_path):
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar"))
    assert summary["divergences"] == []
    # plant a wrong token in one SPACE answer (a logic error): the rerun reports it, not as a near-tie
    path = tmp_path / "run" / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    victim = next(r for r in records if r["method"] == "space" and len(r["ids"]) > 3)
    victim["ids"][2] = (victim["ids"][2] + 1) % 50 + 3
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar"))
    (entry,) = summary["divergences"]
    assert (entry["id"], entry["method"], entry["position"]) == (victim["id"], "space", 2)
    assert entry["method_token"] == victim["ids"][2] and entry["logit_gap"] > 0 and not entry["near_tie"]
    assert summary["methods"]["space"]["identity_rate"] == 0.5
    assert "differ from AR" in (tmp_path / "run" / "summary.md").read_text()


def test_time_limit_stops_starting_prompts_and_summarizes_the_finished_ones(tiny_dir, tmp_path):
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar"))
    path = tmp_path / "run" / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    dropped = records[-1]  # the second prompt loses one answer: it is unfinished
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--time_limit", "0"))
    assert summary["num_samples"] == 1 and "1 of 2 prompts" in summary["partial"]
    assert all(values["answers"] == 1 for values in summary["methods"].values())
    assert len(path.read_text().splitlines()) == 3  # nothing was started after the limit
    # without the limit the same command finishes the run
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar"))
    assert summary["num_samples"] == 2 and "partial" not in summary
    assert any(r["id"] == dropped["id"] and r["method"] == dropped["method"]
               for r in map(json.loads, path.read_text().splitlines()))
    # a limit under which nothing at all is finished is one clear error
    with pytest.raises(space.SpaceError, match="time_limit"):
        run_eval(cli(tiny_dir, tmp_path / "empty", "--methods", "space,ar", "--time_limit", "0"))


def test_cli_finishes_an_interrupted_run(tiny_dir, tmp_path):
    run_eval(cli(tiny_dir, tmp_path / "run", "--num_samples", "1"))
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    (tmp_path / "run" / "samples.jsonl").write_text("\n".join(lines) + "\n"
                                                    + lines[0][: len(lines[0]) // 2])  # torn line
    run_eval(cli(tiny_dir, tmp_path / "run", "--num_samples", "2"))
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert sorted({r["id"] for r in records}) == ["Python/0", "Python/1"] and len(records) == 8


def test_cli_refuses_other_settings_unless_overwrite_which_replaces_only_the_runs_files(tiny_dir, tmp_path):
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar"))
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(space.SpaceError, match=r"other settings \(--max_new_tokens 12 -> 8\)"):
        run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--max_new_tokens", "8"))
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--max_new_tokens", "8", "--overwrite"))
    assert summary["methods"]["ar"]["answers"] == 2 and (tmp_path / "run" / "notes.txt").read_text() == "mine"
    # a directory that holds no run is refused before the model is loaded, --overwrite or not
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    with pytest.raises(space.SpaceError, match="holds no evaluation run"):
        run_eval(cli(tmp_path / "no-model", tmp_path / "clone", "--overwrite"))
    assert [p.name for p in (tmp_path / "clone").iterdir()] == [".git"]


def test_cli_redoes_exactly_the_damaged_prompts_and_counts_each_answer_once(tiny_dir, tmp_path):
    """Issue 17 item 8: a damaged line in the middle used to drop every answer after it, and a prompt partly
    written before a torn last line was counted twice."""
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--num_samples", "4", "--pass_at_k", "false"))
    path = tmp_path / "run" / "samples.jsonl"
    lines = path.read_text().splitlines()
    before = [json.loads(line) for line in lines]
    lines[2] = lines[2][:30]  # Python/1: damaged in the middle
    lines[-1] = lines[-1][:-40]  # Python/3: its second answer torn
    path.write_text("\n".join(lines))
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--num_samples", "4",
                           "--pass_at_k", "false"))
    after = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(r["id"], r["turn"], r["method"]) for r in after]
    assert len(keys) == len(set(keys)) == 8 and summary["methods"]["ar"]["answers"] == 4
    kept = [r for r in before if r["id"] in ("Python/0", "Python/2")]
    assert [r for r in after if r["id"] in ("Python/0", "Python/2")] == kept  # the intact prompts were not redone


def test_flag_parsing_takes_original_true_false_strings(tiny_dir):
    args = parse_eval_args(["--do_sample", "True", "--use_cache", "false", "--mask_diff", "FALSE",
                            "--save_data", "true"])
    assert (args.do_sample, args.use_cache, args.mask_diff, args.save_data) == (True, False, False, True)
    with pytest.raises(space.SpaceError, match=r"eval_infer.py: argument --use_cache.*got maybe"):
        parse_eval_args(["--use_cache", "maybe"])


def test_flag_defaults_are_the_original_parsers():
    args = parse_eval_args([])
    assert args == EvalArgs()
    assert (args.llm_dir, args.mask_id, args.dataset, args.mask_num, args.do_sample, args.use_cache, args.model_type,
            args.mask_diff, args.save_data) == (None, None, "human_eval", None, False, True, "llama", None, True)
    assert (args.methods, args.num_samples, args.max_new_tokens, args.output_dir, args.overwrite, args.data_path,
            args.prompt_style, args.warmup, args.seed, args.temperature, args.top_p, args.top_k,
            args.sampling_mode) == \
        ("space,ar,hf,prompt_lookup", None, None, None, False, None, "auto", 1, 0, 1.0, 1.0, 0, "exact")
    assert Path(args.skip_layers) == ROOT / "space" / "configs" / "self_spec" / "skip_layers.json"
    assert (args.skip_layers_key, args.max_draft, args.draft_threshold, args.sat_num, args.sat_id, args.dtype,
            args.device, args.adapter, args.pass_at_k, args.exec_timeout, args.progress, args.time_limit) == \
        (None, None, None, None, None, "auto", "cpu", None, True, 10.0, True, None)
    assert parse_eval_args(["--overwrite"]).overwrite and parse_eval_args(["--time_limit", "2.5"]).time_limit == 2.5
    with pytest.raises(space.SpaceError, match=r"argument --model_type.*invalid choice: 'gpt'"):
        parse_eval_args(["--model_type", "gpt"])
    with pytest.raises(space.SpaceError, match=r"unknown flag\(s\) for eval_infer.py: \['--no_such_flag', '1'\]"):
        parse_eval_args(["--no_such_flag", "1"])


def test_script_parses_evaluates_and_prints_the_table(tiny_dir, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "eval_infer.py"))["main"]
    summary = main(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--pass_at_k", "false"))
    printed = capsys.readouterr().out
    assert "| space |" in printed and f"results: {tmp_path / 'run'}/summary.json" in printed
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    # the library entry takes the settings as data too: the same run, resumed, gives the same answers
    again = evaluate(EvalArgs(llm_dir=str(tiny_dir), num_samples=2, max_new_tokens=12, methods="space,ar",
                              output_dir=str(tmp_path / "run"), pass_at_k=False, progress=False))
    assert again["methods"]["space"]["total_tokens"] == summary["methods"]["space"]["total_tokens"]


@pytest.mark.parametrize("flags,message", [
    (["--methods", "ar,space,ar"], "--methods names ar more than once; name each method once"),  # item 6
    (["--methods", "space@2,ar,space@2"], "--methods names space@2 more than once"),
    (["--num_samples", "0"], r"--num_samples must be at least 1 \(got 0\)"),  # item 4
    (["--num_samples", "-3"], r"--num_samples must be at least 1 \(got -3\)"),
    (["--max_new_tokens", "0"], r"--max_new_tokens must be at least 1 \(got 0\)"),
    (["--max_new_tokens", "-5"], r"--max_new_tokens must be at least 1 \(got -5\)"),
    (["--exec_timeout", "0"], r"--exec_timeout must be more than 0 seconds \(got 0\)"),  # item 12
    (["--exec_timeout", "-1"], "--exec_timeout must be more than 0 seconds"),
    (["--warmup", "-1"], r"--warmup must be 0 \(no warm-up\) or more rounds \(got -1\)"),
    (["--time_limit", "-1"], "--time_limit must be 0 or more seconds"),
])
def test_cli_out_of_range_values_are_one_error_before_the_model_is_loaded(tmp_path, flags, message):
    """Issue 17 items 4, 6, 12: 0 and negative counts meant "all", a repeated method merged its answers,
    --exec_timeout 0 failed every program, --warmup -1 was accepted. The model path does not exist: the
    check comes first."""
    with pytest.raises(space.SpaceError, match=message):
        run_eval(cli(tmp_path / "no-model", tmp_path / "run", *flags))
    assert not (tmp_path / "run").exists()


def test_humaneval_data_without_tests_fails_when_loading_not_after_generating(tmp_path):
    """Issue 17 item 9: records without `test` passed the loader and failed with KeyError after every answer."""
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"task_id": f"t/{i}", "prompt": "def f():\n"}) + "\n" for i in range(3)))
    with pytest.raises(space.SpaceError, match=r"record 0 of .*mine.jsonl has no 'test' field, which pass@1 runs "
                                               r"\(python\); add it, or pass --pass_at_k false"):
        run_eval(cli(tmp_path / "no-model", tmp_path / "run", "--data_path", str(data)))
    assert len(load_eval_dataset("human_eval", str(data), execute=False)) == 3  # speed only: no tests needed
    go = tmp_path / "go.jsonl"
    go.write_text(json.dumps({"prompt": "func F() {", "test": "func TestF(t *testing.T) {}"}) + "\n")
    with pytest.raises(space.SpaceError, match="has no 'test_setup' field, which pass@1 runs \\(go\\)"):
        load_eval_dataset("humaneval-x-go", str(go))


def test_data_file_that_is_not_utf8_and_output_dir_that_is_a_file(tmp_path):
    """Issue 17 item 11: both ended in a traceback."""
    (tmp_path / "cip.jsonl").write_bytes('{"prompt": "\u00e9t\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(space.SpaceError, match="cip.jsonl: not UTF-8 text .* save the file as UTF-8"):
        load_eval_dataset("cip", str(tmp_path / "cip.jsonl"))
    (tmp_path / "out.txt").write_text("")
    with pytest.raises(space.SpaceError, match="--output_dir .*out.txt is a file, not a directory"):
        run_eval(cli(tmp_path / "no-model", tmp_path / "out.txt"))


def test_run_config_holds_every_setting_the_answers_depend_on(tiny_dir, tmp_path):
    """Every flag is in run_config.json (directly or in a method's options), or listed with why it does not
    change a stored answer; a rerun differing in a recorded one is refused, not mixed."""
    from dataclasses import fields

    not_recorded = {
        "output_dir": "where the run is", "overwrite": "what to do with another run",
        "save_data": "which summaries are written (rewritten every run)", "warmup": "untimed",
        "progress": "display", "time_limit": "when to stop starting prompts (resumable)",
        "answer_format": "extra files written from the answers", "answer_file": "the same",
        "model_id": "a name in those files",
        "skip_layers": "resolved into options.self_spec.skip_layers", "skip_layers_key": "the same",
        "mask_num": "in options / the model config",
        "mask_id": "in options.space", "mask_diff": "in options.space", "sat_num": "in options.sdsat",
        "sat_id": "in options.sdsat", "max_draft": "in options.self_spec", "draft_threshold": "in options.self_spec",
        **{name: "in options.space when set" for name in ("copy_tokens", "copy_ngram", "branch_width", "max_tree_rows",
                                                          "cost_curve")},
    }
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--pass_at_k", "false"))
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    recorded = set(config) | set(config["quality"]) | {o for options in config["options"].values() for o in options}
    flags = {f.name for f in fields(EvalArgs)}
    assert flags - recorded - set(not_recorded) == set()
    assert not set(not_recorded) & set(config)
    with pytest.raises(space.SpaceError, match=r"--seed 0 -> 3"):
        run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--pass_at_k", "false", "--seed", "3"))


def test_auto_dtype_is_recorded_as_the_dtype_it_chose(tiny_dir, tmp_path):
    """`--dtype auto` (the default) runs fp32 on this CPU and records `float32`, so a resume with the explicit
    name continues the run and one with `bfloat16` is refused."""
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "ar", "--pass_at_k", "false"))
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["dtype"] == "float32"
    run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "ar", "--pass_at_k", "false", "--dtype", "float32"))
    with pytest.raises(space.SpaceError, match=r"float32 -> bfloat16"):
        run_eval(cli(tiny_dir, tmp_path / "run", "--methods", "ar", "--pass_at_k", "false", "--dtype", "bfloat16"))


def test_cli_bad_input(tiny_dir, tmp_path):
    with pytest.raises(space.SpaceError, match="unknown method"):
        run_eval(cli(tiny_dir, tmp_path / "a", "--methods", "space,medusa"))
    with pytest.raises(space.SpaceError, match="unknown dataset"):
        run_eval(cli(tiny_dir, tmp_path / "b", "--dataset", "humaneval-x-rust"))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(space.SpaceError, match="is not a model directory"):
        run_eval(cli(tmp_path / "notamodel", tmp_path / "c"))
    plain = tmp_path / "plain"
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer))
    del model.config.mask_id
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    with pytest.raises(space.SpaceError, match="no SPACE mask tokens"):
        run_eval(cli(plain, tmp_path / "d"))


def test_bench_step_times_the_model_parts_with_the_profiler_and_keeps_its_format(tiny_dir, tmp_path, capsys):
    output = tmp_path / "bench.json"
    main = runpy.run_path(str(ROOT / "scripts" / "bench_step.py"))["main"]
    written = main(["--model", str(tiny_dir), "--ks", "1,2", "--max_new_tokens", "8", "--repeats", "1",
                    "--output", str(output)])
    assert json.loads(output.read_text()) == written and "| space |" in capsys.readouterr().out
    published = json.loads((ROOT / "docs" / "results" / "bench_step.json").read_text())
    # the published report predates the one provenance record every benchmark writes; the rest is its format
    assert set(written) == set(published) - {"threads", "machine", "torch"} | {"provenance"}
    assert [set(row) for row in written["rows"]] == [set(published["rows"][0])] * 3
    assert [(row["method"], row["k"]) for row in written["rows"]] == [("ar", 0), ("space", 1), ("space", 2)]
    for row in written["rows"]:  # the model's parts are ranges inside the decode range
        assert 0 < row["model_ms"] <= row["ms_per_step"]
        assert row["overhead_ms"] == pytest.approx(row["ms_per_step"] - row["model_ms"], abs=0.011)


def test_run_eval_launcher_only_forwards_flags(tiny_dir, tmp_path):
    """The launcher runs the main job's flags, then the user's, which win; nothing else has another default."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, SPACE_PYTHON=sys.executable)
    # --output_dir holds a run with other settings and a file of the user's: --overwrite replaces that run's files
    # and nothing else
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "run_config.json").write_text('{"methods": ["hf"]}')
    (tmp_path / "launch" / "samples.jsonl").write_text('{"id": "Python/0", "turn": 0, "method": "hf"}\n')
    (tmp_path / "launch" / "notes.txt").write_text("mine")
    completed = subprocess.run(["bash", str(root / "run_eval.sh"), "--llm_dir", str(tiny_dir), "--num_samples", "1",
                                "--max_new_tokens", "6", "--methods", "space,ar", "--output_dir",
                                str(tmp_path / "launch"), "--warmup", "0", "--overwrite", "--progress", "false"],
                               env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| space |" in completed.stdout and "--num_samples 1" in completed.stderr
    summary = json.loads((tmp_path / "launch" / "summary.json").read_text())
    assert summary["num_samples"] == 1 and set(summary["methods"]) == {"space", "ar"}
    assert (tmp_path / "launch" / "notes.txt").read_text() == "mine"
    assert {json.loads(line)["method"] for line in (tmp_path / "launch" / "samples.jsonl").open()} == {"space", "ar"}
    launcher = (root / "run_eval.sh").read_text()
    job = launcher[launcher.index("args=(") :].split("\n", 1)[0]
    flags = [word for word in job.split() if word.startswith("--")]
    assert flags == ["--methods", "--num_samples", "--max_new_tokens"]  # the main job's own, and no other setting
    assert re.findall(r"\$\{(\w+):-", launcher) == ["SPACE_PYTHON"]  # no setting with a default of its own


def test_method_options_follow_each_decoders_options_class():
    """Each method gets exactly the set flags named like its options: nothing another method takes."""
    from space.decoding import option_names
    from space.eval.flags import EvalArgs
    from space.eval.pipeline import method_options

    args = EvalArgs(mask_num=4, sat_num=2, max_draft=3, sampling_mode="original", do_sample=True, seed=7,
                    skip_layers="SKIP")
    labels = ["ar", "hf", "prompt_lookup", "space", "space@2", "self_spec", "sdsat"]
    options = method_options(args, labels, max_new_tokens=9)
    for label in labels:
        name = label.split("@")[0]
        assert set(options[label]) <= set(option_names(name)), label
        assert options[label]["max_new_tokens"] == 9 and options[label]["seed"] == 7
        space.decoding.parse_options(name, options[label] if name != "self_spec" else
                                     dict(options[label], skip_layers={"attention": [], "mlp": []}))
    assert options["space"]["mask_num"] == 4 and options["space@2"]["mask_num"] == 2
    assert options["space"]["sampling_mode"] == "original" and options["sdsat"]["sampling_mode"] == "original"
    assert options["sdsat"]["sat_num"] == 2 and options["self_spec"]["max_draft"] == 3
    assert options["self_spec"]["skip_layers"] == "SKIP"
    assert "mask_num" not in options["ar"] and "sampling_mode" not in options["self_spec"]


def test_every_decoder_option_is_an_eval_flag_or_deliberately_not():
    """A new decoder option either gets a flag of the same name (then `method_options` passes it on) or is
    listed here with the reason it has none, so no option is silently unreachable from the command line."""
    from dataclasses import fields

    from space.decoding import DECODERS, option_names
    from space.eval.flags import EvalArgs

    not_flags = {
        "eos_token_id": "the model's generation config decides, as in the original",
        "threshold_state": "carried across prompts by the harness (session_options)",
        "acceptance": "the same (SPACE's measured acceptance rates)",
        "auto_parameters": "the reference's fixed γ-update constants",
        "adaptive_threshold": "always on in the paper's evaluation",
        "prompt_lookup_num_tokens": "HF's default for the baseline",
        "streamer": "an object that watches a decode (Python API only)", "on_step": "the same",
    }
    flags = {f.name for f in fields(EvalArgs)}
    options = {name for method in DECODERS for name in option_names(method)}
    assert options - flags == set(not_flags)


@pytest.mark.parametrize("flags, message", [
    (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1 .got 0.; leave it out for the default"),
    (["--max_new_tokens", "-1"], "--max_new_tokens must be at least 1 .got -1."),
    (["--num_samples", "0"], "--num_samples must be at least 1"),
    (["--batch_size", "0"], "--batch_size must be at least 1 .got 0.$"),
    (["--exec_timeout", "0"], "--exec_timeout must be more than 0 seconds"),
])
def test_a_quality_run_checks_its_bounds_before_the_model_loads(tmp_path, no_model_loading, flags, message):
    from space.eval.quality import evaluate_quality, parse_quality_args

    with pytest.raises(space.SpaceError, match=message):
        evaluate_quality(parse_quality_args(["--output_dir", str(tmp_path / "q"), *flags]))


def test_a_full_disk_is_one_line_that_keeps_the_answers_and_says_how_to_resume(tiny_dir, tmp_path, monkeypatch):
    """No space left while appending the second prompt's answers: one SpaceError with the rerun; the first prompt's
    answers are kept, and the same command (with room again) finishes the run without redoing them."""
    import errno

    real_open, appends = Path.open, []

    def full_on_the_second_append(self, mode="r", *args, **kwargs):
        if self.name == "samples.jsonl" and mode == "a":
            appends.append(self)
            if len(appends) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_on_the_second_append)
    argv = cli(tiny_dir, tmp_path / "run", "--methods", "space,ar", "--pass_at_k", "false")
    with pytest.raises(space.SpaceError, match=r"no space left to write .*samples.jsonl \(No space left on device\): "
                                               "what was finished is kept; free some space and rerun the same "
                                               "command to resume") as error:
        run_eval(argv)
    assert "\n" not in str(error.value)
    kept = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["id"] for r in kept} == {"Python/0"}
    monkeypatch.setattr(Path, "open", real_open)
    summary = run_eval(argv)
    assert summary["num_samples"] == 2
    again = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r for r in again if r["id"] == "Python/0"] == kept  # not redone


def test_a_full_disk_leaves_a_whole_file_as_it_was(tmp_path, monkeypatch):
    import errno
    import os

    from space.io import write_atomic

    path = tmp_path / "summary.json"
    write_atomic(path, "old\n")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(space.SpaceError, match="no space left to write .*summary.json"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and not path.with_name("summary.json.tmp").exists()


def _measured(records: list[dict]) -> dict:
    """What a run measured per answer, timing aside."""
    kept = ("ids", "steps", "tokens_per_step", "accepted_per_step", "rows_per_step", "copy_accepted_per_step",
            "topk_accepted_per_step", "session")
    return {(r["id"], r["turn"], r["method"]): {k: r.get(k) for k in kept} for r in records}


@pytest.mark.parametrize("carry", ["true", "false"])
def test_a_resumed_run_measures_what_an_uninterrupted_one_does(tiny_dir, tmp_path, monkeypatch, carry):
    """SPACE's acceptance rates carry from prompt to prompt; a run interrupted after two prompts and resumed takes
    them up from the stored answers, so every later prompt's steps and rows are the uninterrupted run's."""
    from space.eval.results import ResultStore

    def argv(output):
        return cli(tiny_dir, output, "--methods", "space,ar", "--num_samples", "4", "--max_new_tokens", "24",
                   "--pass_at_k", "false", "--carry_state", carry)

    run_eval(argv(tmp_path / "whole"))
    add_prompt, stored = ResultStore.add_prompt, []

    def interrupted_after_two(self, prompt_id, records):
        if len(stored) == 2:
            raise KeyboardInterrupt
        stored.append(prompt_id)
        return add_prompt(self, prompt_id, records)

    monkeypatch.setattr(ResultStore, "add_prompt", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval(argv(tmp_path / "resumed"))
    monkeypatch.setattr(ResultStore, "add_prompt", add_prompt)
    run_eval(argv(tmp_path / "resumed"))
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    whole, resumed = _measured(read("whole")), _measured(read("resumed"))
    assert resumed == whole and len(whole) == 8
    if carry == "true":  # the rates did change between prompts, so the resume had something to restore
        sessions = [whole[(f"Python/{i}", 0, "space")]["session"] for i in range(4)]
        assert sessions[0] != sessions[3]
    else:
        assert all(record["session"] is None for record in whole.values())


def test_quality_executes_each_distinct_answer_of_a_problem_once(monkeypatch):
    from types import SimpleNamespace

    from space.eval.pipeline import add_quality

    calls = []
    monkeypatch.setattr("space.eval.pipeline.check_completion",
                        lambda problem, text, language, **kw: calls.append(text) or SimpleNamespace(
                            status="passed" if text == "good" else "failed", passed=text == "good"))
    prompts = [EvalPrompt(id=f"p{i}", turns=["x"], problem={"task_id": f"p{i}"}, language="python") for i in range(2)]
    records = [dict(id=p, turn=0, method=m, text=t) for p, m, t in
               [("p0", "ar", "good"), ("p0", "space", "good"), ("p0", "hf", "bad"), ("p1", "ar", "good")]]
    add_quality(records, prompts, SimpleNamespace(pass_at_k=True, exec_timeout=1.0, unsafe_execution=False))
    assert calls == ["good", "bad", "good"]  # p0's second "good" is not run again; p1's is another problem
    assert [r["passed"] for r in records] == [True, True, False, True]


def test_a_batched_ar_row_that_differs_from_its_batch1_answer_is_reported(tiny_dir, tmp_path, monkeypatch):
    original = space.decode_batch

    def off_by_one(model, prompts, method, **options):  # a batched decoder that is wrong on its first row
        results = original(model, prompts, method, **options)
        results[0].tokens[-1] = (results[0].tokens[-1] + 1) % 50
        return results

    monkeypatch.setattr(space, "decode_batch", off_by_one)
    summary = run_eval(cli(tiny_dir, tmp_path / "run", "--num_samples", "4", "--methods", "ar", "--pass_at_k",
                           "false", "--batch_size", "2"))
    assert summary["methods"]["ar"]["batch1_ar_identity_rate"] == 0.5
