"""Data-parallel evaluation (`space.eval.ranks`): real launches of 2-3 CPU ranks (torchrun, gloo) of
`scripts/eval_infer.py` and `scripts/eval_quality.py` on a tiny model, against one-process runs of the same flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import space
from space.eval import evaluate, results
from space.eval.flags import parse_eval_args
from space.eval.quality import evaluate_quality, parse_quality_args
from space.eval.ranks import PartStore, Ranks, ShardedRun, per_rank

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "batch_seconds", "rank")  # what may differ between a sharded and a one-process run
WRAPPER = """
import os, runpy, sys
rank = int(os.environ["RANK"])
script = sys.argv[1]
sys.argv = sys.argv[1:]
if rank == 1 and os.environ.get("TEST_RANK1_FLAGS"):
    sys.argv += os.environ["TEST_RANK1_FLAGS"].split()
if rank == 1 and os.environ.get("TEST_RANK1_FAILS_AFTER"):
    import space.eval.harness as harness
    original, calls = harness.timed_decode, [0]
    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] > int(os.environ["TEST_RANK1_FAILS_AFTER"]):
            raise RuntimeError("injected failure on rank 1")
        return original(*args, **kwargs)
    harness.timed_decode = failing
runpy.run_path(script, run_name="__main__")
"""


def eval_flags(model_dir, output, *extra) -> list[str]:
    return ["--llm_dir", str(model_dir), "--dataset", "human_eval", "--num_samples", "5", "--max_new_tokens", "12",
            "--methods", "space,ar,prompt_lookup", "--carry_state", "false", "--output_dir", str(output),
            "--progress", "false", *extra]


def launch(script: str, flags: list[str], ranks: int, tmp_path: Path, env: dict | None = None,
           background: bool = False):
    """`torchrun --nproc_per_node <ranks> <script> <flags>` through a wrapper that can change rank 1 (`env`)."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    port = str(29500 + (os.getpid() * 7 + ranks) % 400)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", port,
               str(wrapper), str(ROOT / "scripts" / script), *flags]
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def answers(directory: Path) -> dict:
    """Every stored answer by (prompt, turn, method), without what timing and placement decide."""
    records = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
    keyed = {(r["id"], r["turn"], r["method"]): {k: v for k, v in r.items() if k not in TIMING} for r in records}
    assert len(keyed) == len(records), "an answer was stored twice"
    return keyed


def run_eval(argv: list[str]) -> dict:
    return evaluate(parse_eval_args(argv))


def one_process(model_dir, output) -> dict:
    run_eval(eval_flags(model_dir, output))
    return answers(output)


def test_two_ranks_store_exactly_the_one_process_answers(eval_model_dir, tmp_path):
    """run_eval_multi_node.sh with 2 CPU ranks, 5 prompts (3 and 2): the merged samples.jsonl equals a one-process
    run's on every token and record, each (prompt, turn, method) once; the summary adds each rank's throughput; no
    part file is left."""
    env = dict(os.environ, NPROC_PER_NODE="2", PYTHON=sys.executable, OMP_NUM_THREADS="1",
               MASTER_PORT=str(29100 + os.getpid() % 300))
    flags = eval_flags(eval_model_dir, tmp_path / "ranks")
    done = subprocess.run(["bash", str(ROOT / "run_eval_multi_node.sh"), *flags], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = one_process(eval_model_dir, tmp_path / "one")
    merged = answers(tmp_path / "ranks")
    assert merged == expected and len(merged) == 15
    records = [json.loads(line) for line in (tmp_path / "ranks" / "samples.jsonl").read_text().splitlines()]
    assert {r["id"]: r["rank"] for r in records} == {f"Python/{i}": i % 2 for i in range(5)}
    summary = json.loads((tmp_path / "ranks" / "summary.json").read_text())
    assert [(row["rank"], row["prompts"]) for row in summary["ranks"]] == [(0, 3), (1, 2)]
    assert all(row["ar tok/s"] > 0 for row in summary["ranks"])
    assert summary["methods"]["space"]["identity_rate"] == 1.0
    assert "Per rank" in (tmp_path / "ranks" / "summary.md").read_text()
    assert not results.part_paths(tmp_path / "ranks")
    assert done.stdout.count("results:") == 1  # the table is printed once, by rank 0
    assert "torch.distributed.run --nnodes 1 --node_rank 0 --nproc_per_node 2" in done.stderr  # the echoed command


def test_the_launcher_builds_the_accelerate_command_and_forwards_every_flag(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path / "args"}"\n')
    fake.chmod(0o755)
    env = dict(os.environ, LAUNCHER="accelerate", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
               SCRIPT="scripts/eval_quality.py", PYTHON=str(fake))
    done = subprocess.run(["bash", str(ROOT / "run_eval_multi_node.sh"), "--dataset", "humaneval-x-go", "--device",
                           "cuda"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "args").read_text().splitlines() == [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", "1",
        "--num_processes", "16", "--main_process_ip", "10.0.0.1", "--main_process_port", "29500",
        "scripts/eval_quality.py", "--dataset", "humaneval-x-go", "--device", "cuda"]
    bad = subprocess.run(["bash", str(ROOT / "run_eval_multi_node.sh")], env=dict(env, LAUNCHER="mpirun"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "LAUNCHER must be torchrun or accelerate (got mpirun)" in bad.stderr


def test_ranks_started_with_other_flags_refuse_with_one_line_naming_the_flag(eval_model_dir, tmp_path):
    done = launch("eval_infer.py", eval_flags(eval_model_dir, tmp_path / "run"), 2, tmp_path,
                  env={"TEST_RANK1_FLAGS": "--max_new_tokens 8"})
    assert done.returncode != 0
    assert "rank 1 was started with other settings than rank 0 (--max_new_tokens 12 on rank 0, 8 on rank 1)" \
        in done.stdout + done.stderr
    assert not (tmp_path / "run" / "samples.jsonl").exists()


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_run_with_its_error_and_keeps_every_finished_answer(eval_model_dir, tmp_path):
    flags = eval_flags(eval_model_dir, tmp_path / "run", "--num_samples", "40")
    started = time.monotonic()
    done = launch("eval_infer.py", flags, 2, tmp_path, env={"TEST_RANK1_FAILS_AFTER": "4"})
    assert time.monotonic() - started < 240  # ended, not hung (the subprocess itself times out at 300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "injected failure on rank 1" in output
    kept = answers(tmp_path / "run")  # rank 1 answered one prompt (3 methods) before its fourth decode failed
    assert ("Python/1", 0, "ar") in kept and not results.part_paths(tmp_path / "run")
    assert len({key[0] for key in kept if int(key[0].split("/")[1]) % 2 == 0}) < 20  # rank 0 stopped early
    # the same command without the failure finishes the run: each answer once, the one-process answers
    finished = launch("eval_infer.py", flags, 2, tmp_path)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    run_eval(eval_flags(eval_model_dir, tmp_path / "one", "--num_samples", "40"))
    assert answers(tmp_path / "run") == answers(tmp_path / "one")


@pytest.mark.slow
def test_a_killed_run_resumes_with_another_rank_count_counting_each_answer_once(eval_model_dir, tmp_path):
    flags = eval_flags(eval_model_dir, tmp_path / "run", "--num_samples", "30", "--max_new_tokens", "24",
                       "--methods", "space,ar")
    process = launch("eval_infer.py", flags, 2, tmp_path, background=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if any(path.stat().st_size > 0 for path in results.part_paths(tmp_path / "run")):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    process.wait()
    assert results.part_paths(tmp_path / "run") and not (tmp_path / "run" / "summary.json").exists()
    resumed = launch("eval_infer.py", flags, 3, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    run_eval(eval_flags(eval_model_dir, tmp_path / "one", "--num_samples", "30", "--max_new_tokens", "24",
                    "--methods", "space,ar"))
    assert answers(tmp_path / "run") == answers(tmp_path / "one")
    assert not results.part_paths(tmp_path / "run")


@pytest.mark.slow
def test_quality_run_on_two_ranks_answers_what_one_process_answers(eval_model_dir, tmp_path):
    flags = ["--llm_dir", str(eval_model_dir), "--dataset", "human_eval", "--num_samples", "7", "--max_new_tokens",
             "10", "--batch_size", "2", "--pass_at_k", "false", "--progress", "false"]
    done = launch("eval_quality.py", [*flags, "--output_dir", str(tmp_path / "ranks")], 2, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    evaluate_quality(parse_quality_args([*flags, "--output_dir", str(tmp_path / "one")]))
    assert answers(tmp_path / "ranks") == answers(tmp_path / "one")
    summary = json.loads((tmp_path / "ranks" / "summary.json").read_text())
    assert [(row["rank"], row["prompts"]) for row in summary["ranks"]] == [(0, 4), (1, 3)]


# --- in one process: the N = 1 case, leftovers of sharded runs, the pieces ---------------------------------

def test_one_process_merges_the_part_files_a_stopped_sharded_run_left(eval_model_dir, tmp_path):
    """A 2-rank run killed mid-way leaves samples.jsonl plus part files (one with a torn line); one process
    resumes it: every part's finished prompts are kept, nothing counted twice, the parts are gone."""
    expected = one_process(eval_model_dir, tmp_path / "one")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text((tmp_path / "one" / "run_config.json").read_text())
    lines = (tmp_path / "one" / "samples.jsonl").read_text().splitlines()
    by_id = {}
    for line in lines:
        by_id.setdefault(json.loads(line)["id"], []).append(line)
    (run / "samples.jsonl").write_text("\n".join(by_id["Python/0"]) + "\n")
    (run / "samples.rank0.jsonl").write_text("\n".join(by_id["Python/0"] + by_id["Python/2"]) + "\n")  # 0 twice
    (run / "samples.rank1.jsonl").write_text("\n".join(by_id["Python/1"]) + "\n" + by_id["Python/3"][0][:40])
    run_eval(eval_flags(eval_model_dir, run))
    assert answers(run) == expected and not results.part_paths(run)


def test_overwrite_discards_the_parts_of_the_replaced_run(eval_model_dir, tmp_path):
    run_eval(eval_flags(eval_model_dir, tmp_path / "run", "--num_samples", "2"))
    stale = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    (tmp_path / "run" / "samples.rank1.jsonl").write_text(json.dumps(dict(stale, id="Python/4", text="stale")) + "\n")
    run_eval(eval_flags(eval_model_dir, tmp_path / "run", "--max_new_tokens", "8", "--overwrite", "true"))
    kept = answers(tmp_path / "run")
    assert kept[("Python/4", 0, stale["method"])]["text"] != "stale" and len(kept) == 15


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK 2 of WORLD_SIZE 2"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not whole numbers"),
])
def test_a_broken_launch_environment_is_one_line(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(space.SpaceError, match=message):
        Ranks.from_env()


def test_ranks_take_their_local_gpu_or_a_share_of_the_cores(monkeypatch):
    threads = []
    monkeypatch.setattr("torch.set_num_threads", threads.append)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Ranks(rank=5, world=8, local_rank=1, local_world=4).device("cpu") == "cpu" and threads == [4]
    assert Ranks(rank=3, world=8, local_rank=3, local_world=8).device("cuda") == "cuda:3"
    with pytest.raises(space.SpaceError, match="--device cuda:2 with 8 ranks on this node"):
        Ranks(rank=3, world=8, local_rank=3, local_world=8).device("cuda:2")
    assert Ranks().device("cuda:2") == "cuda:2" and threads == [4]  # one rank: as asked, threads untouched


def test_shards_are_every_nth_unfinished_prompt_after_the_finished_ones(tmp_path):
    from space.eval.datasets import EvalPrompt

    prompts = [EvalPrompt(id=f"p{i}", turns=["x"]) for i in range(7)]
    found = [dict(id=f"p{i}", turn=0, method="ar") for i in (0, 3)]
    shards = []
    for rank in range(2):
        run = ShardedRun(Ranks(rank=rank, world=2), tmp_path, {})
        run.store = PartStore(tmp_path / f"part{rank}.jsonl", found)
        shards.append([p.id for p in run.shard(prompts, ["ar"])])
    assert shards == [["p0", "p1", "p3", "p4", "p6"], ["p0", "p2", "p3", "p5"]]


def test_per_rank_throughput():
    records = [dict(id="a", method="ar", ids=[1] * 10, seconds=1.0, rank=0),
               dict(id="a", method="space", ids=[1] * 10, seconds=0.5, rank=0),
               dict(id="b", method="ar", ids=[1] * 6, seconds=2.0, rank=1)]
    assert per_rank(records) == [{"rank": 0, "prompts": 1, "ar tok/s": 10.0, "space tok/s": 20.0},
                                 {"rank": 1, "prompts": 1, "ar tok/s": 3.0}]
    assert per_rank([{k: v for k, v in r.items() if k != "rank"} for r in records]) == []
    untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # a quality run's answers
    assert per_rank(untimed) == [{"rank": 0, "prompts": 1}, {"rank": 1, "prompts": 1}]
