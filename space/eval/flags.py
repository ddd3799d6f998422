"""The evaluation's flags as data: `EvalArgs` (what `space.eval.evaluate` reads) and its command line.

Two groups, as the help shows them: `OriginalFlags` keep the original SPACE eval flags with their
meanings (booleans as `true/false`), `ToolkitFlags` are ours. `space.cli.parse_flags` turns the
dataclasses into the parser, so a boolean takes `true/false` (also `yes/no`, `1/0`) and a bare
`--overwrite` means true. `EvalArgs(...)` can also be built directly, with every default.
`check_eval_args` turns a count or time out of range into one clear error before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from space.cli import parse_flags, require_counts
from space.decoding import DECODERS
from space.errors import SpaceError
from space.eval.datasets import dataset_names
from space.eval.prompts import MODEL_TYPES
from space.eval.skip_search import SHIPPED_SKIP_FILE


def _flag(default, help: str | None = None, **kwargs):
    return field(default=default, metadata=dict(kwargs, **({"help": help} if help else {})))


@dataclass
class OriginalFlags:
    _argument_group_name = "original SPACE flags"

    llm_dir: str | None = _flag(None, "model dir, hub name or .gguf (default: the embedded model)")
    mask_id: int | None = _flag(None, "default: the model config")
    dataset: str = _flag("human_eval", f"one of {', '.join(dataset_names())}")
    mask_num: int | None = _flag(None, "k (default: the model config)")
    do_sample: bool = _flag(False)
    use_cache: bool = _flag(True, "KV cache for every method (original default: false)")
    model_type: str = _flag("llama", "selects the original prompt string", choices=MODEL_TYPES)
    mask_diff: bool | None = _flag(None, "default: the model config")
    save_data: bool = _flag(True, "per-step statistics, histogram, repetition filter, CSVs")


@dataclass
class ToolkitFlags:
    _argument_group_name = "toolkit flags"

    methods: str = _flag("space,ar,hf,prompt_lookup",
                         f"comma list of {sorted(DECODERS)}; `space@K` / `sdsat@K` run with k = K (k sweeps)")
    num_samples: int | None = _flag(None, "first N prompts (default: all)")
    max_new_tokens: int | None = _flag(None, "default: the original's per dataset")
    output_dir: str | None = _flag(None, "default: outputs/eval/<dataset>")
    overwrite: bool = _flag(False, "replace the files of a run with other settings in --output_dir "
                                   "(nothing else there)")
    data_path: str | None = _flag(None, "local file or hub name for non-vendored datasets")
    prompt_style: str = _flag("auto", "auto: chat_template for the embedded model, original (--model_type) otherwise",
                              choices=["auto", "original", "chat_template"])
    warmup: int = _flag(1, "untimed warm-up rounds of every method")
    seed: int = _flag(0)
    temperature: float = _flag(1.0)
    top_p: float = _flag(1.0)
    top_k: int = _flag(0)
    sampling_mode: str = _flag("exact", choices=["exact", "original"])
    skip_layers: str = _flag(str(SHIPPED_SKIP_FILE),
                             "self_spec: skip_layers.json (scripts/search_skip_layers.py writes one)")
    skip_layers_key: str | None = _flag(None, "self_spec: entry of --skip_layers (default: the model's name, "
                                              "or the file's only entry)")
    max_draft: int | None = _flag(None, "self_spec: drafts per round at most (default 8)")
    draft_threshold: float | None = _flag(None, "self_spec: initial confidence threshold γ "
                                                "(default 0.8 greedy, 0.5 sampling)")
    tree: bool = _flag(True, "space: verify a candidate tree (chain, runners-up, copies from the context); "
                             "false: the paper's chain")
    copy_tokens: int | None = _flag(None, "space: longest copy from the context per step (default 24; 0: none)")
    copy_ngram: int | None = _flag(None, "space: longest context suffix matched for a copy (default 6)")
    branch_width: int | None = _flag(None, "space: runners-up per mask slot offered beside the chain (default 2)")
    max_tree_rows: int | None = _flag(None, "space: most rows per step (default 48 on CPU, 128 on GPU)")
    cost_curve: str | None = _flag(None, "space: 'measure' prices rows with forwards timed on this model and "
                                         "device (default: the device's stored curve)")
    sampler_head: bool = _flag(True, "space: draft slot by slot with the model's sampler head when it has one "
                                     "(false: the masks' own drafts)")
    sat_num: int | None = _flag(None, "sdsat: adaptive tokens per draft step k (default: the model config)")
    sat_id: int | None = _flag(None, "sdsat: adaptive token id (default: the model config; 32011 for the released "
                                     "CodeLlama SDSAT models)")
    dtype: str = _flag("auto", "float32, bfloat16, float16 or auto (the fastest dtype measured to keep identity on the "
                               "device)")
    device: str = _flag("cpu", "cpu, cuda or auto")
    adapter: str | None = _flag(None, "peft adapter directory on top of --llm_dir")
    pass_at_k: bool = _flag(True, "execute generated code (HumanEval datasets)")
    exec_timeout: float = _flag(10.0, "seconds per executed program")
    unsafe_execution: bool = _flag(False, "run generated code WITHOUT the bubblewrap sandbox (your rights; warns)")
    progress: bool = _flag(True)
    carry_state: bool = _flag(True, "what a method learns carries from prompt to prompt (SPACE's acceptance rates, "
                                    "self_spec's γ), as in the paper's evaluation; false: every prompt starts afresh")
    time_limit: float | None = _flag(None, "seconds: start no new prompt after this, summarize the finished ones "
                                           "(resume later)")
    batch_size: int = _flag(1, "prompts answered at once: the methods that batch (space, ar) decode them in one "
                               "space.decode_batch call per turn, timed together (total tokens/s)")
    answer_format: str | None = _flag(None, "spec-bench: also write Spec-Bench model-answer files (--answer_file)",
                                      choices=["spec-bench"])
    answer_file: str | None = _flag(None, "Spec-Bench answers: a path with {method}, or F.jsonl -> F-<method>.jsonl "
                                          "(default: <output_dir>/spec_bench-{method}.jsonl)")
    model_id: str | None = _flag(None, "the model_id in Spec-Bench answers (default: the model's folder name, "
                                       "+ -<method>)")


@dataclass
class EvalArgs(ToolkitFlags, OriginalFlags):
    """Every flag of the evaluation, as `space.eval.evaluate` reads them."""


def parse_eval_args(argv: list[str] | None = None, description: str | None = None) -> EvalArgs:
    """`argv` (default: the command line) -> `EvalArgs`; a bad flag or value is one `SpaceError` line."""
    # no defaults in --help: the help texts already say what a None default means
    groups = parse_flags((OriginalFlags, ToolkitFlags), argv, "eval_infer.py", description, show_defaults=False)
    return EvalArgs(**{name: value for group in groups for name, value in asdict(group).items()})


def check_run_bounds(args) -> None:
    """The bounds an evaluation and a quality run share: counts of at least one (0 or a negative count never means
    "all" or "the default") and a positive execution timeout; before anything is loaded."""
    default = "leave it out for the default"
    require_counts(args, [name for name in ("num_samples", "max_new_tokens", "batch_size") if hasattr(args, name)],
                   hints={"num_samples": default, "max_new_tokens": default})
    if not args.exec_timeout > 0:
        raise SpaceError(f"--exec_timeout must be more than 0 seconds (got {args.exec_timeout:g}); "
                         "to run no program pass --pass_at_k false")


def check_eval_args(args: EvalArgs) -> None:
    """One clear error for a count or time out of range (0 or a negative count never means "all")."""
    check_run_bounds(args)
    if args.warmup < 0:
        raise SpaceError(f"--warmup must be 0 (no warm-up) or more rounds (got {args.warmup})")
    if args.time_limit is not None and not args.time_limit >= 0:
        raise SpaceError(f"--time_limit must be 0 or more seconds (got {args.time_limit:g})")
    if args.answer_file is not None and args.answer_format is None:
        raise SpaceError("--answer_file names where --answer_format writes; pass --answer_format spec-bench")
