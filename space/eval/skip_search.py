"""Search the skip set of self-speculative decoding by Bayesian optimisation (docs/spec/SELF_SPECULATIVE.md §8).

The search space is the 2L bits "skip attention of layer i" / "skip MLP of layer i"; the objective
(maximised) is a black box, normally the measured tokens/s of greedy `self_spec` on calibration
prompts (`space.eval.skip_pipeline` builds it). The optimiser is optuna's TPE (a Bayesian
optimiser that handles binary parameters natively; the reference used a GP over [0,1]^2L rounded
at 0.5, which the bits make unnecessary).

What this module owns: the trial loop (ask → evaluate → tell → log), the time budget, warm-start
probes, the resumable JSONL trial log with its settings file, and where the shipped self_spec configs
live. It does not load models, tokenize or time decoding.

Nothing mixed: a measured tokens/s is only comparable under the settings it was measured with (model,
dtype, device, calibration prompts, tokens per prompt, the decoder's draft settings, the machine). The
caller passes them as `settings`; they are kept beside the log (`<log>.settings.json`), and a rerun
with other ones is refused, naming the flag, instead of ranking trials measured differently together.

Why a JSONL trial log (`space.io.JsonlLog`) and not optuna's `JournalStorage` with
`load_if_exists`: (1) an interrupted write: optuna 5.0's journal file skips a torn last line on
reading but the next append lands after it, and the reload after that fails with a
JSONDecodeError, so an interrupted search would not resume; `JsonlLog.resume()` drops a damaged line
before appending, the one rule every resumable log of this project follows. (2) The file stays one
readable record per measured skip set (`attention`, `mlp`, `num_layers`, `tokens_per_second`, ...),
which the published logs (docs/results/self_spec) use; a journal is optuna's operation log and would
need a migration. (3) What the journal adds, several workers sharing one study, does not apply: the
objective is wall-clock speed, which parallel workers on one machine would distort. Resuming is
exact either way: logged points are told to a fresh study (`add_trial`) before it asks.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from space.decoding.skip_layers import SkipLayers
from space.errors import SpaceError
from space.io import JsonlLog, shipped, write_json

# The shipped self_spec configs of a repository checkout (the package is installed with `pip install -e .`):
# the calibration prompts and the skip sets, which the search writes into and the evaluation reads.
SELF_SPEC_CONFIGS = shipped("configs", "self_spec")
SHIPPED_SKIP_FILE = SELF_SPEC_CONFIGS / "skip_layers.json"
CALIBRATION_PROMPTS = SELF_SPEC_CONFIGS / "calibration_prompts.json"
VALUE = "tokens_per_second"  # the key of the objective's record that is maximised
TRIAL_KEYS = ("attention", "mlp", "num_layers", VALUE)  # a record without them is no trial (damaged)
MAX_REPEATS = 50  # proposals in a row that were all measured before: the search has converged


@dataclass
class SearchResult:
    best: SkipLayers
    best_value: float
    trials: list[dict] = field(default_factory=list)  # every record, loaded and new
    new_trials: int = 0


class TrialLog:
    """One JSON record per evaluated skip set; reloaded on start, so an interrupted search resumes.

    With `settings` (what the measurements depend on, keyed by flag name), the log's settings file must
    hold the same ones before its trials are reused.
    """

    def __init__(self, path: str | Path | None, num_layers: int, settings: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.num_layers = num_layers
        self.settings = settings

    @property
    def settings_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".settings.json")

    def load(self) -> list[dict]:
        if self.path is None:
            return []
        log = JsonlLog(self.path)
        records = log.resume()  # a point on a damaged line is measured again
        trials = [r for r in records if all(k in r for k in TRIAL_KEYS)]
        if len(trials) < len(records):
            log.rewrite(trials)
        for record in trials:
            if record["num_layers"] != self.num_layers:
                raise SpaceError(f"trial log {str(self.path)!r} is for a {record['num_layers']}-layer model, "
                                 f"this one has {self.num_layers}; pass another --log")
        if self.settings is not None:
            self._check_settings(bool(trials))
        return trials

    def _check_settings(self, has_trials: bool) -> None:
        """Refuse trials measured under other settings; record this search's settings for the next run."""
        recorded = None
        if self.settings_path.is_file():
            try:
                recorded = json.loads(self.settings_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
        expected = json.loads(json.dumps(self.settings))  # as it reads back (tuples become lists)
        if has_trials and not isinstance(recorded, dict):
            raise SpaceError(f"trial log {str(self.path)!r} has no readable settings file ({self.settings_path.name}), "
                             "so its trials may have been measured otherwise; pass another --log or delete that log")
        if has_trials and recorded != expected:
            changes = [f"--{key} {_short(recorded.get(key))} -> {_short(expected.get(key))}"
                       for key in sorted(set(recorded) | set(expected)) if recorded.get(key) != expected.get(key)]
            raise SpaceError(f"trial log {str(self.path)!r} was measured with other settings ({'; '.join(changes)}); "
                             "rerun with those, or pass another --log to search afresh")
        if recorded != expected:
            write_json(self.settings_path, expected, sort_keys=True)

    def append(self, record: dict) -> None:
        if self.path is not None:
            JsonlLog(self.path).append(record)


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def skip_to_params(skip: SkipLayers, num_layers: int) -> dict[str, int]:
    attention, mlp = skip.masks(num_layers)
    return {**{f"attention_{i}": int(b) for i, b in enumerate(attention)},
            **{f"mlp_{i}": int(b) for i, b in enumerate(mlp)}}


def params_to_skip(params: dict, num_layers: int) -> SkipLayers:
    return SkipLayers.from_bits([params[f"attention_{i}"] for i in range(num_layers)],
                                [params[f"mlp_{i}"] for i in range(num_layers)])


def search(
    num_layers: int,
    objective: Callable[[SkipLayers], dict],
    time_budget: float,
    n_trials: int | None = None,
    log: str | Path | None = None,
    probes: list[SkipLayers] = (),
    seed: int = 1,
    first_trial_seconds: float = 0.0,
    progress: bool = True,
    settings: dict | None = None,
) -> SearchResult:
    """Maximise `objective(skip)[VALUE]` for at most `time_budget` seconds and `n_trials` new trials.

    `first_trial_seconds`: the caller's estimate of one evaluation; a budget below it is an error.
    `settings`: what the measurements depend on; a `log` measured under other ones is refused.
    A new trial starts only if the slowest trial so far would still fit in the remaining budget.
    """
    try:
        import optuna
    except ImportError as error:
        raise SpaceError("the skip-layer search needs optuna: pip install optuna") from error
    if n_trials is not None and n_trials < 1:
        raise SpaceError(f"--n_trials must be at least 1 (got {n_trials}); leave it out to search until the "
                         "budget ends")
    if time_budget <= 0 or time_budget < first_trial_seconds:
        raise SpaceError(f"time budget {time_budget:.1f}s is too small to evaluate one skip set (about "
                         f"{first_trial_seconds:.1f}s each); raise --time_budget")
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    distributions = {name: optuna.distributions.CategoricalDistribution([0, 1])
                     for name in skip_to_params(SkipLayers(), num_layers)}
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))

    trial_log = TrialLog(log, num_layers, settings)
    records = trial_log.load()
    measured: dict[SkipLayers, dict] = {}
    for record in records:
        skip = SkipLayers.from_dict({k: record[k] for k in ("attention", "mlp", "num_layers")})
        measured[skip] = record
        study.add_trial(optuna.trial.create_trial(params=skip_to_params(skip, num_layers),
                                                  distributions=distributions, value=record[VALUE]))
    for probe in probes:  # known-good points first (the reference's lazy probes)
        probe = probe.validate(num_layers, "probe")
        if probe not in measured:
            study.enqueue_trial(skip_to_params(probe, num_layers))

    new, repeats, slowest = 0, 0, first_trial_seconds
    bar = tqdm(total=round(time_budget), desc="searching skip layers", disable=not progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]")
    while n_trials is None or new < n_trials:
        elapsed = time.perf_counter() - start
        if elapsed + slowest > time_budget or repeats >= MAX_REPEATS:
            break
        trial = study.ask(distributions)
        skip = params_to_skip(trial.params, num_layers)
        if skip in measured:  # noisy re-measurements are not worth the budget: tell the known value
            study.tell(trial, measured[skip][VALUE])
            repeats += 1
            continue
        repeats = 0
        began = time.perf_counter()
        outcome = objective(skip)
        seconds = time.perf_counter() - began
        slowest = max(slowest, seconds)
        record = {**skip.to_dict(), **outcome, "seconds": round(seconds, 4)}
        study.tell(trial, float(record[VALUE]))
        trial_log.append(record)
        records.append(record)
        measured[skip] = record
        new += 1
        best = max(records, key=lambda r: r[VALUE])
        bar.update(min(round(time.perf_counter() - start) - bar.n, bar.total - bar.n))
        bar.set_postfix_str(f"trials {len(records)}, best {best[VALUE]:.2f} tok/s")
    bar.close()
    if not records:
        raise SpaceError(f"time budget {time_budget:.0f}s ran out before one skip set was evaluated; "
                         "raise --time_budget")
    best = max(records, key=lambda r: r[VALUE])
    best_skip = SkipLayers.from_dict({k: best[k] for k in ("attention", "mlp", "num_layers")})
    return SearchResult(best_skip, float(best[VALUE]), records, new)
