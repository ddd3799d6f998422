"""One writer per resumable output (`space.io.OutputLock`): a second run on the same output is refused in one line,
naming the first one's pid, before it loads anything or writes anything, so no answer, trial or checkpoint is ever
written twice. The evaluation's own lock is tested in test_results_store.py."""

import os

import pytest

from space.errors import SpaceError
from space.io import OutputLock
from space.testing import tiny_sft_base, tiny_sft_data, tiny_sft_flags

IN_USE = rf"is in use by another run \(pid {os.getpid()}\); wait for it to finish or choose another"


def test_a_second_writer_is_refused_and_the_first_one_done_frees_it(tmp_path):
    output = tmp_path / "answers.jsonl"
    first = OutputLock.beside(output, "--output").acquire()
    with pytest.raises(SpaceError, match=rf"--output {output} {IN_USE} --output$"):
        OutputLock.beside(output, "--output").acquire()
    first.release()
    with OutputLock.beside(output, "--output"):  # free again (a killed writer's lock goes with its process)
        assert output.with_name("answers.jsonl.lock").read_text().strip() == str(os.getpid())


def test_distillation_into_an_output_in_use_is_refused(tmp_path, no_model_loading):
    from space.training.distill import make_distill_data, parse_distill_args

    output = tmp_path / "distill.jsonl"
    with OutputLock.beside(output, "--output"):
        with pytest.raises(SpaceError, match=f"--output {output} {IN_USE}"):
            make_distill_data(parse_distill_args(["--output", str(output), "--limit", "2", "--families", "coding"]))
    assert not output.exists()


def test_a_skip_search_on_a_log_in_use_is_refused(tmp_path, eval_model_dir):
    from space.eval.skip_pipeline import parse_search_args, search_skip_layers

    log = tmp_path / "trials.jsonl"
    with OutputLock.beside(log, "--log"):
        with pytest.raises(SpaceError, match=f"--log {log} {IN_USE}"):
            search_skip_layers(parse_search_args(["--llm_dir", str(eval_model_dir), "--log", str(log), "--output",
                                                  str(tmp_path / "skip.json"), "--time_budget", "60"]))
    assert not log.exists()


def test_training_into_an_output_dir_in_use_is_refused(tmp_path, no_model_loading):
    from space.training import train
    from space.training.recipe import TRAIN_LOCK

    output = tmp_path / "out"
    flags = tiny_sft_flags(tiny_sft_base(tmp_path / "base"), tiny_sft_data(tmp_path / "data.json"), output)
    with OutputLock(output / TRAIN_LOCK, f"--output_dir {output}"):
        with pytest.raises(SpaceError, match=f"--output_dir {output} {IN_USE}"):
            train(flags)
    assert sorted(path.name for path in output.iterdir()) == [TRAIN_LOCK]


def test_a_quality_run_into_a_directory_in_use_is_refused(tmp_path, no_model_loading):
    from space.eval.quality import evaluate_quality, parse_quality_args
    from space.eval.results import LOCK_FILE

    run = tmp_path / "quality"
    with OutputLock(run / LOCK_FILE, f"--output_dir {run}"):
        with pytest.raises(SpaceError, match=f"--output_dir {run} {IN_USE}"):
            evaluate_quality(parse_quality_args(["--output_dir", str(run), "--num_samples", "2",
                                                 "--pass_at_k", "false"]))


def test_the_default_model_recipe_in_a_work_dir_in_use_is_refused(tmp_path, no_model_loading):
    from space.training.default_model import make_default_model, parse_default_model_args

    work = tmp_path / "work"
    with OutputLock(work / "recipe.lock", f"--work_dir {work}"):
        with pytest.raises(SpaceError, match=f"--work_dir {work} {IN_USE}"):
            make_default_model(parse_default_model_args(["--work_dir", str(work), "--limit", "2", "--export_dir",
                                                         str(tmp_path / "export")]))
    assert sorted(path.name for path in work.iterdir()) == ["recipe.lock"]
