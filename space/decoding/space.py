"""SPACE auto-correct decoding (Yi et al. 2024; docs/spec/SPACE.md §3): verify k candidates, draft k more per forward.

Each step feeds the last committed token, the k candidates of the previous step and k+1 private
groups of k masks (layout in `space.layout`). In one forward:

1. the rows at the last committed token and at each candidate give the target distributions that
   verify the candidates (acceptance rules in `space.decoding.verify`);
2. the row at the first rejected candidate (or after the last one) gives the bonus token;
3. mask group `a`, which saw the prefix plus the `a` accepted candidates, drafts the next k.

So every step emits between 1 and k+1 tokens, and greedy output equals greedy AR decoding.
The first step has no real candidates: its slots hold the mask id (a one-hot draft, so exact
sampling stays exact; the original rule gives them probability 65504 and always rejects).

With the KV cache only the `1 + k(k+2)` new rows are fed; after verification the cache keeps the
committed tokens and moves the accepted candidates' entries next to them (`CompactCache.compact`).
lm_head runs once per step, on the chunk's rows only (never on the prefix rows of an uncached step).

k is bounded twice before anything is built: an explicit k by the width the model's masks were trained
with (`space.tokens.resolve_mask_spec`), and every k by the size of one step's attention mask, whose
`1 + k(k+2)` rows grow as k² (`MAX_STEP_ENTRIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Run
from space.decoding.sampling import draft_picker, probabilities, sample
from space.decoding.tree import generate_tree
from space.decoding.row_cost import CostCurve
from space.decoding.tree_shape import AcceptanceRates
from space.decoding.verify import accept, check_sampling_mode
from space.errors import SpaceError
from space.layout import ChunkLayout, step_layout
from space.tokens import resolve_mask_spec

FP16_MAX = 65504.0  # the original's draft probability for the first step's dummy candidates
# One step's attention mask is `rows x keys` with rows = 1 + k(k+2): quartic in k. 2^26 entries (256 MiB
# as an fp32 mask, before the attention itself) allows k up to 89 for a short prompt, far past any
# trained width, and refuses before a runaway k (200: 1.6e9 entries) exhausts the machine's memory.
MAX_STEP_ENTRIES = 2**26


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
    sampler_head: bool = True  # refine the drafts with the model's sampler head when it has one (space.sampler_head)

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
                raise SpaceError('cost_curve must be None, "measure" or a map of rows >= 1 to positive times, e.g. '
                                 f"{{1: 30.0, 16: 45.0}} ({error})") from None
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


@dataclass
class _Drafts:
    """The current candidates and, when sampling, how they were drawn."""

    tokens: torch.Tensor  # [k]
    q: torch.Tensor | None = None  # [k, V] draft distributions (exact rule)
    token_probs: torch.Tensor | None = None  # [k] q_i(x_i) (original rule)

    @classmethod
    def dummy(cls, group_ids: torch.Tensor, vocab_size: int, sampling: bool) -> "_Drafts":
        """First step: the candidate slots hold mask ids, drafted with certainty (a one-hot q)."""
        if not sampling:
            return cls(group_ids.clone())
        q = torch.nn.functional.one_hot(group_ids, vocab_size).float()
        return cls(group_ids.clone(), q, torch.full(group_ids.shape, FP16_MAX, device=group_ids.device))

    @classmethod
    def draw(cls, logits: torch.Tensor, options: SpaceOptions, generator) -> "_Drafts":
        """Next candidates from a mask group's logits `[k, V]`: argmax, or a sample per slot."""
        if not options.do_sample:
            return cls(logits.argmax(dim=-1))
        q = probabilities(logits, options.temperature, options.top_k, options.top_p)  # [k, V]
        tokens = sample(q, generator)
        return cls(tokens, q, q.gather(1, tokens[:, None])[:, 0])

    @classmethod
    def picked(cls, logits: torch.Tensor, tokens: list[int], options: SpaceOptions) -> "_Drafts":
        """Candidates already chosen slot by slot (the sampler head's), with the distributions they came from."""
        tokens = torch.tensor(tokens, device=logits.device)
        if not options.do_sample:
            return cls(tokens)
        q = probabilities(logits, options.temperature, options.top_k, options.top_p)
        return cls(tokens, q, q.gather(1, tokens[:, None])[:, 0])


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: SpaceOptions) -> DecodeResult:
    target = Model(model)
    spec = resolve_mask_spec(target.config, options.mask_id, options.mask_num, options.mask_diff)
    k = spec.mask_num
    check_step_size(k, input_ids.shape[1] + options.max_new_tokens)  # before the layout, which is rows x rows
    device = target.device
    group_ids = torch.tensor(spec.group_ids(k), device=device)
    if options.uses_tree:
        return generate_tree(target, input_ids, options, k, group_ids).result()
    layout = ChunkLayout.build(k, device)
    chunk_ids = layout.token_template(group_ids)  # [q]; row 0 and candidate rows change every step

    run = Run.start(target, input_ids, options, DecodeStats(), cache_slack=layout.size)
    out, cache = run.out, run.cache
    drafts = _Drafts.dummy(group_ids, target.config.vocab_size, options.do_sample)
    picker = draft_picker(options.do_sample, options.temperature, options.top_k, options.top_p, run.generator)

    while True:
        n = out.length
        # 1. inputs: the chunk [x_{n-1}, G_0, c_0, ..., c_{k-1}, G_k]; the committed prefix too when the
        #    cache has not seen it (first step, or no cache)
        chunk_ids[0] = out.ids[n - 1]
        chunk_ids[layout.candidate_rows] = drafts.tokens
        if run.seen > 0:  # the cache holds x_0 .. x_{n-2}
            ids = chunk_ids
            positions = layout.position_offsets + (n - 1)
            prefix = layout.allowed.new_ones(layout.size, n - 1)  # causally, every chunk row sees the prefix
            keys = torch.cat([torch.arange(n - 1, device=device), positions])  # cached x_t sits at position t
            mask = target.mask(torch.cat([prefix, layout.allowed], dim=1), positions, keys)
            base = 0
        else:  # the full extended sequence E
            ids = torch.cat([out.ids[: n - 1], chunk_ids])
            allowed, positions = step_layout(n, k)
            positions = positions.to(device)
            mask = target.mask(allowed.to(device), positions, positions)
            base = n - 1

        # 2. one forward
        hidden = target.hidden(ids, positions, mask, cache)  # [fed, H]

        # 3. lm_head once on the whole chunk: the verification rows and every group's masks ((k+1)^2 rows).
        #    The group to draft from is known only after verification, but a second call would read the
        #    head's weight again, which costs more than the extra rows (docs/benchmarks.md, issue 18).
        chunk_logits = target.logits(hidden[base:])  # [1 + k(k+2), V]
        # verify the candidates; the row after the last accepted one gives the bonus token
        verify_logits = chunk_logits[layout.verify_rows]  # [k+1, V]
        accepted, bonus = accept(verify_logits, drafts.tokens, options, run.generator, q=drafts.q,
                                 draft_probs=drafts.token_probs, sampling_mode=options.sampling_mode)

        # 4. commit (cut at EOS and at max_new_tokens)
        run.commit(drafts.tokens[:accepted].tolist() + [bonus], accepted)
        if out.finished:
            return run.result()

        # 5. cache: keep x_0..x_{n-1}, then the accepted candidates (now x_n .. x_{n+a-1})
        if cache is not None:
            cache.compact(n, (n - 1) + layout.candidate_rows[:accepted])

        # 6. draft the next k from group `accepted`, which saw exactly the committed tokens
        rows = layout.group_rows(accepted)
        draft_logits = chunk_logits[rows]  # [k, V]
        if target.sampler_head is not None and options.sampler_head:  # slot by slot, after the bonus token
            draft_logits, tokens = target.chain_drafts(hidden[base:][rows], draft_logits, bonus, picker)
            drafts = _Drafts.picked(draft_logits, tokens, options)
        else:
            drafts = _Drafts.draw(draft_logits, options, run.generator)
