"""`scripts/bench_batch.py`: batched throughput on a tiny saved model, every row checked, resumable."""

import json
import runpy
from pathlib import Path

import pytest

import space
from space.bench import batch_throughput
from space.bench.batch_throughput import BatchArgs, batches, summarize

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_batch.py"


def bench(argv):
    return runpy.run_path(str(SCRIPT), run_name="bench_batch")["main"](argv)


def flags(model_dir, output, *extra):
    return ["--llm_dir", str(model_dir), "--num_samples", "5", "--batch_sizes", "1,2,4", "--max_new_tokens", "6",
            "--output", str(output), *extra]


def test_the_report_times_every_method_at_every_size_and_checks_every_row(eval_model_dir, tmp_path, capsys):
    output = tmp_path / "bench" / "batch.json"
    report = bench(flags(eval_model_dir, output))
    rows = {(row["batch_size"], row["method"]): row for row in report["rows"]}
    assert set(rows) == {(size, method) for size in (1, 2, 4) for method in ("ar", "chain", "tree")}
    for row in rows.values():
        assert row["rows"] == 5 and row["identical_rows"] == "5/5" and row["tokens_per_second"] > 0
    assert rows[2, "ar"]["vs_ar"] == 1.0 and rows[2, "tree"]["rows_per_step"] > 1
    assert json.loads(output.read_text())["rows"] == report["rows"]
    assert output.with_suffix(".png").stat().st_size > 0
    log = output.with_suffix(".jsonl").read_text().splitlines()
    assert len(log) == 3 * (2 + 1 + 1)  # one record per method and chunk of 4 x B prompts: 2, 1 and 1 chunks
    assert [entry["batch"] for entry in report["cache_upkeep"]] == [2, 4]
    assert all(entry["compact_ms"] > 0 and entry["realign_ms"] > 0 for entry in report["cache_upkeep"])
    printed = capsys.readouterr().out
    assert "| batch | method | tokens/s |" in printed and "| batch | entries per row |" in printed


def test_an_interrupted_run_resumes_and_times_only_what_is_missing(eval_model_dir, tmp_path, monkeypatch):
    output = tmp_path / "batch.json"
    bench(flags(eval_model_dir, output))
    log = output.with_suffix(".jsonl")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])  # two records lost, the last one torn
    calls = []
    real = space.decode_batch
    monkeypatch.setattr(space, "decode_batch", lambda *a, **k: calls.append(k) or real(*a, **k))
    report = bench(flags(eval_model_dir, output))
    timed = [options for options in calls if options["max_new_tokens"] == 6]
    assert len(timed) == 2  # the two lost records, after one warm-up round
    assert len(log.read_text().splitlines()) == len(lines)
    assert all(row["identical_rows"] == "5/5" for row in report["rows"])


def test_a_row_that_differs_from_batch_1_ar_is_counted():
    records = [dict(batch_size=1, batch=0, method="ar", prompts=[0], seconds=1.0, tokens=[4], steps=[4], rows_fed=[0],
                    digests=["a"]),
               dict(batch_size=1, batch=1, method="ar", prompts=[1], seconds=1.0, tokens=[4], steps=[4], rows_fed=[0],
                    digests=["b"]),
               dict(batch_size=2, batch=0, method="tree", prompts=[1, 0], seconds=1.0, tokens=[4, 4], steps=[2, 2],
                    rows_fed=[8, 8], digests=["b", "x"])]
    rows = summarize(records, ["ar", "tree"], [1, 2])
    assert rows[-1]["identical_rows"] == "1/2" and rows[-1]["tokens_per_step"] == 2.0


def test_batches_are_cut_from_prompts_sorted_by_length():
    assert batches([3, 9, 5, 9], 2) == [[1, 3], [2, 0]]


@pytest.mark.parametrize("argv,message", [
    (["--batch_sizes", "1,x"], "comma list of whole numbers"),
    (["--batch_sizes", "0,2"], "at least 1 each"),
    (["--methods", "ar,beam"], "--methods takes a comma list"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
    (["--num_samples", "-1"], "--num_samples must be at least 1"),
])
def test_bad_flags_are_one_line_before_loading(argv, message, no_model_loading):
    with pytest.raises(space.SpaceError, match=message) as error:
        bench(argv)
    assert "\n" not in str(error.value)


def test_defaults_cover_the_issue_sizes():
    assert batch_throughput.batch_sizes(BatchArgs()) == [1, 2, 4, 8, 16]
