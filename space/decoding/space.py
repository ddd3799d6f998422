"""SPACE auto-correct decoding (Yi et al. 2024; docs/spec/SPACE.md §3): its options and its entry point.

A SPACE step feeds the last committed token, the candidates of the previous step and private groups of k
masks. In one forward the rows at the committed token and at each candidate verify the candidates
(`space.decoding.verify`), the row after the last accepted one gives the bonus token, and the mask group on
the last accepted candidate drafts the next k. So every step emits at least one token, and greedy output
equals greedy AR decoding.

The loop is `space.decoding.tree.generate_tree`, in one of two modes:

* the candidate tree (default): the chain, each slot's runners-up and copies from the context in one
  prefix trie, its shape chosen each step from measured acceptance and the device's price per row;
* the paper's chain (`tree=False`, and always with the paper's sampling rule, which is defined on a chain):
  k candidates and k + 1 groups, `1 + k(k+2)` rows, the first step verifying mask ids (a one-hot draft, so
  exact sampling stays exact; the original rule gives them probability 65504 and always rejects).

With the KV cache only the new rows are fed; after verification the cache keeps the committed tokens and
moves the accepted candidates' entries next to them (`CompactCache.compact`). lm_head runs once per step, on
the fed chunk's rows only (never on the prefix rows of an uncached step).

k is bounded twice before anything is built: an explicit k by the width the model's masks were trained
with (`space.tokens.resolve_mask_spec`), and every k by the size of one step's attention mask, whose
`1 + k(k+2)` rows grow as k² (`MAX_STEP_ENTRIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.decoding.common import DecodeOptions, DecodeResult, Model
from space.decoding.row_cost import CostCurve
from space.decoding.tree import generate_tree
from space.decoding.tree_shape import AcceptanceRates
from space.decoding.verify import check_sampling_mode
from space.errors import SpaceError
from space.tokens import add_mask_tokens, read_mask_spec, resolve_mask_spec

# One step's attention mask is `rows x keys` with rows = 1 + k(k+2): quartic in k. 2^26 entries (256 MiB
# as an fp32 mask, before the attention itself) allows k up to 89 for a short prompt, far past any
# trained width, and refuses before a runaway k (200: 1.6e9 entries) exhausts the machine's memory.
MAX_STEP_ENTRIES = 2**26
UNTRAINED_MASK_NUM = 3  # the decoding k of untrained masks added to a model that has none (`prepare`)


@dataclass
class SpaceOptions(DecodeOptions):
    """SPACE's options; None takes the model config's (`decode_mask_num`, else `mask_num`, for k)."""

    mask_num: int | None = None  # k: candidates verified and drafted per step
    mask_id: int | None = None
    mask_diff: bool | None = None
    sampling_mode: str = "exact"  # "exact" speculative sampling or the paper's "original" rule
    # The candidate tree (space.decoding.tree); tree=False is the faithful chain of the paper.
    tree: bool = True
    copy_tokens: int = 24  # longest copy from the context per step (0: no copy branch)
    copy_ngram: int = 6  # longest context suffix matched for a copy
    branch_width: int = 2  # runners-up per mask slot offered beside the chain (0: none)
    cost_curve: object = None  # None: the device's default; "measure": measured on the model; or {rows: ms}
    max_tree_rows: int | None = None  # most rows per step; None: the device's default
    acceptance: object = None  # an AcceptanceRates carried across calls; None: measured afresh per call
    sampler_head: bool = True  # refine the drafts with the model's sampler head when it has one
                               # (space.adapters.sampler_head)

    @classmethod
    def session_options(cls) -> dict:
        return {"acceptance": AcceptanceRates()}

    def validate(self) -> None:
        super().validate()
        check_sampling_mode(self.sampling_mode)
        if self.mask_num is not None and self.mask_num < 1:
            raise SpaceError(f"mask_num must be >= 1 (got {self.mask_num})")
        for name in ("copy_tokens", "branch_width"):
            if getattr(self, name) < 0:
                raise SpaceError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.copy_ngram < 1:
            raise SpaceError(f"copy_ngram must be >= 1 (got {self.copy_ngram})")
        if self.cost_curve is not None and self.cost_curve != "measure" and not isinstance(self.cost_curve, CostCurve):
            try:
                self.cost_curve = CostCurve.from_points(self.cost_curve)
            except (TypeError, ValueError, AttributeError) as error:
                raise SpaceError('cost_curve must be None, "measure" or a map of whole rows >= 1 to finite positive '
                                 f"times, e.g. {{1: 30.0, 16: 45.0}} ({error})") from None
        if self.max_tree_rows is not None and self.max_tree_rows < 1:
            raise SpaceError(f"max_tree_rows must be >= 1 (got {self.max_tree_rows})")
        if self.acceptance is not None and not isinstance(self.acceptance, AcceptanceRates):
            raise SpaceError("acceptance must be a space.decoding.tree_shape.AcceptanceRates or None")

    @property
    def uses_tree(self) -> bool:
        """The tree, unless the chain was asked for or the paper's sampling rule (defined on a chain) is."""
        return self.tree and not (self.do_sample and self.sampling_mode == "original")


def step_entries(k: int, length: int) -> int:
    """Attention-mask entries of a step at k: `1 + k(k+2)` rows, each seeing up to the `length` committed
    tokens and the chunk itself."""
    rows = 1 + k * (k + 2)
    return rows * (length + rows)


def check_step_size(k: int, length: int) -> None:
    """Refuse a k whose steps would not fit in memory (`MAX_STEP_ENTRIES`), naming the largest k that fits."""
    if step_entries(k, length) <= MAX_STEP_ENTRIES:
        return
    largest = 0
    while step_entries(largest + 1, length) <= MAX_STEP_ENTRIES:
        largest += 1
    rows = 1 + k * (k + 2)
    fix = f"use mask_num <= {largest}" if largest else "shorten the prompt or max_new_tokens"
    raise SpaceError(
        f"mask_num {k} makes SPACE steps of 1 + k(k+2) = {rows} rows; with {length} prompt + new tokens one step's "
        f"attention mask has {step_entries(k, length):,} entries, above the memory bound "
        f"space.decoding.space.MAX_STEP_ENTRIES = {MAX_STEP_ENTRIES:,}; {fix}"
    )


def prepare(model, tokenizer, options: list[dict], untrained: bool = False) -> str | None:
    """Before any timed decode: SPACE needs mask tokens. With `untrained` (a base model shipped without trained
    ones, such as the embedded SmolLM2) and no mask id asked for, untrained masks wide enough for every run's k
    are added: SPACE stays lossless but few drafts are accepted, which the returned note says. Then each run's
    mask id and k (`options`, one dict per run) are checked against the model's masks."""
    added = read_mask_spec(model.config) is None and untrained and all(o.get("mask_id") is None for o in options)
    if added:
        widths = [o["mask_num"] for o in options if o.get("mask_num") is not None]
        add_mask_tokens(model, tokenizer, mask_num=max([UNTRAINED_MASK_NUM] + widths))
        model.config.decode_mask_num = UNTRAINED_MASK_NUM
    for o in options:
        resolve_mask_spec(model.config, o.get("mask_id"), o.get("mask_num"), o.get("mask_diff"))
    if added:
        return ("note: the model has no trained mask tokens here; untrained ones were added, so SPACE output equals "
                "AR but few drafts are accepted")
    return None


@torch.inference_mode()
def generate_batch(model, prompts: list[torch.Tensor], options: list[SpaceOptions],
                   batch_size: int | None = None) -> list[DecodeResult]:
    """SPACE for every prompt (`[1, n_i]` each, with its own options: seed, budget) in one forward per step, at most
    `batch_size` at once (`space.decoding.batch.run_rows`)."""
    target = Model(model)
    first = options[0]
    spec = resolve_mask_spec(target.config, first.mask_id, first.mask_num, first.mask_diff)
    k = spec.mask_num
    for prompt, row_options in zip(prompts, options):  # before any layout, which is rows x rows
        check_step_size(k, prompt.shape[1] + row_options.max_new_tokens)
    group_ids = torch.tensor(spec.group_ids(k), device=target.device)
    return [run.result() for run in generate_tree(target, prompts, options, k, group_ids, batch_size)]


def generate(model, input_ids: torch.Tensor, options: SpaceOptions) -> DecodeResult:
    return generate_batch(model, [input_ids], [options])[0]
