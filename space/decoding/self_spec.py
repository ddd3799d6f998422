"""Self-speculative decoding (Draft & Verify; Zhang et al., arXiv 2309.08168; docs/spec/SELF_SPECULATIVE.md §4-§7).

One model plays both roles. Each round:

1. draft: the same model with the sub-blocks in `skip_layers` bypassed (`space.decoding.skip_layers`) proposes
   tokens one at a time from the last committed token, until its top-1 probability falls below γ
   (the low-confidence token is kept), `max_draft` tokens, EOS, or the remaining budget;
2. verify: one full-model forward over `[x_last, d_1..d_n]` scores every draft;
3. accept: greedy prefix match or exact speculative sampling (`space.decoding.verify`), so the output
   is exactly greedy / sampled decoding of the full model;
4. update the cache: keep `x_last` and the `a` accepted drafts, drop the rest;
5. move γ toward the target acceptance rate (`space.decoding.threshold`).

The KV cache is shared: the draft reads the committed full-model entries and writes scratch entries
only in the attention layers it runs; they are dropped (every layer truncated to the committed length)
before verification, which recomputes those positions with the full model. Prefill and the first token
always use the full model. Without the cache every forward recomputes the whole sequence, the draft's
included (slow; it exists to test the logic, as for the other methods).

When sampling, drafts are sampled from the draft's filtered distribution (same temperature / top-k /
top-p as the target), which exact speculative sampling requires; the stop confidence is the drafted
token's probability under the raw softmax, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from space.cache import CompactCache
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Output, Run
from space.decoding.drafts import Drafts
from space.decoding.sampling import Sampler
from space.decoding.skip_layers import check_skippable, resolve_skip_layers, skipping_forward
from space.decoding.threshold import DEFAULT_AUTO_PARAMETERS, AutoParameters, ThresholdState, update_threshold
from space.decoding.verify import accept
from space.errors import SpaceError

DEFAULT_THRESHOLD = {False: 0.8, True: 0.5}  # γ0 of the reference's greedy (essg) and sampling (sss) loops


@dataclass
class SelfSpecOptions(DecodeOptions):
    """Self-speculative decoding's options (Draft & Verify)."""

    skip_layers: object = None  # SkipLayers, {"attention": [...], "mlp": [...]} or a skip_layers.json; required
    skip_layers_key: str | None = None  # the entry of a skip_layers.json file (None: the one for the model's name)
    max_draft: int = 8  # K_max: drafts per round at most
    draft_threshold: float | None = None  # γ0; None: 0.8 greedy, 0.5 sampling (the reference's defaults)
    adaptive_threshold: bool = True
    auto_parameters: tuple = DEFAULT_AUTO_PARAMETERS  # [f, β1, α, ε, β2] of the γ update
    threshold_state: object = None  # a ThresholdState carries γ across calls; None: fresh per call

    @classmethod
    def session_options(cls) -> dict:
        """γ carries over from prompt to prompt, as in the paper's evaluation."""
        return {"threshold_state": ThresholdState()}

    def validate(self) -> None:
        super().validate()
        if self.max_draft < 1:
            raise SpaceError(f"max_draft must be >= 1 (got {self.max_draft})")
        if self.draft_threshold is not None and not 0 <= self.draft_threshold <= 1:
            raise SpaceError(f"draft_threshold must be in [0, 1] (got {self.draft_threshold})")
        if self.threshold_state is not None and not isinstance(self.threshold_state, ThresholdState):
            raise SpaceError("threshold_state must be a space.decoding.threshold.ThresholdState or None (got "
                             f"{type(self.threshold_state).__name__})")


def prepare(model, tokenizer, options: list[dict], untrained: bool = False) -> None:
    """Before any timed decode: the model must be a LLaMA-style layer loop, and each run's skip set (a file is
    read once here: its entry replaces it) must fit it."""
    check_skippable(model)
    for run_options in options:
        skip = resolve_skip_layers(run_options.get("skip_layers"), model, run_options.pop("skip_layers_key", None))
        run_options["skip_layers"] = skip.to_dict()


@dataclass
class SelfSpecStats(DecodeStats):
    """`DecodeStats` plus the draft side: drafts per round, draft forwards, γ at the end."""

    drafted_per_step: list[int] = field(default_factory=list)
    draft_forwards: int = 0
    final_threshold: float | None = None

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(self.drafted_per_step)
        return sum(self.accepted_per_step) / drafted if drafted else 0.0


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: SelfSpecOptions) -> DecodeResult:
    target = Model(model)
    check_skippable(target.model)
    skip = resolve_skip_layers(options.skip_layers, target.model, options.skip_layers_key)
    masks = skip.masks(target.config.num_hidden_layers)
    params = AutoParameters.from_list(options.auto_parameters)
    state = options.threshold_state if options.threshold_state is not None else ThresholdState()
    initial = options.draft_threshold if options.draft_threshold is not None else DEFAULT_THRESHOLD[options.do_sample]
    state.start_call(initial)

    # a round drafts at most the budget left, so the cache needs no room for more (max_draft may be huge)
    run = Run.start(target, input_ids, options, SelfSpecStats(),
                    cache_slack=min(options.max_draft, options.max_new_tokens) + 1)
    out, cache, stats = run.out, run.cache, run.stats

    while not out.finished:
        committed = out.length  # x_0 .. x_{committed-1}; the cache holds all but x_last (none before prefill)
        # 1. draft, except in the prefill round, and never more than the budget leaves room for (+1 bonus)
        room = min(options.max_draft, out.max_new_tokens - out.generated - 1)
        limit = target.position_limit(committed)  # verification feeds x_last at committed - 1, then the drafts
        room = room if limit is None else min(room, limit - (committed - 1))
        if stats.steps > 0 and room > 0:
            drafts = _draft(target, masks, out, room, state.gamma, run.sampler, cache, stats)
        else:
            drafts = Drafts(origin="layers")
        n = len(drafts)
        draft_ids = drafts.ids(target.device)

        # 2. verify: one full forward over [x_last, d_1..d_n] (the whole sequence without a cache)
        hidden = run.forward(draft_ids)
        verify_logits = target.logits(hidden[-(n + 1):])  # [n+1, V]

        # 3. accept
        accepted, bonus = accept(verify_logits, draft_ids, run.sampler, q=drafts.q)

        # 4. commit (cut at EOS and at max_new_tokens), then keep x_last + the accepted drafts in the cache
        run.commit(drafts.tokens[:accepted] + [bonus], accepted)
        stats.drafted_per_step.append(n)
        if cache is not None:
            cache.truncate(committed + accepted)

        # 5. adapt γ
        update_threshold(state, accepted, n, options.max_draft, params, options.adaptive_threshold)

    stats.final_threshold = state.gamma
    return run.result()


def _draft(target: Model, masks, out: Output, room: int, gamma: float, sampler: Sampler, cache: CompactCache | None,
           stats: SelfSpecStats) -> Drafts:
    """Up to `room` draft tokens from the layer-skipped model; the cache is left as it was found."""
    device = target.device
    committed = out.length
    tokens, qs = [], []
    eos = out.eos
    for j in range(room):
        if cache is not None:  # one new token against the committed cache + this round's scratch entries
            last = out.ids[committed - 1 : committed] if j == 0 else torch.tensor(tokens[-1:], device=device)
            ids, positions = last, torch.tensor([committed - 1 + j], device=device)
            mask = None  # the layers that run hold keys 0..p, all visible to p unless a window hides the oldest
            if target.attention.windowed:
                keys = torch.arange(committed + j, device=device)
                mask = target.mask(torch.ones(1, keys.numel(), dtype=torch.bool, device=device), positions, keys)
        else:  # the whole sequence, causally masked: its last token after all before it, nothing cached
            sequence = torch.cat([out.committed(), torch.tensor(tokens, dtype=torch.long, device=device)])
            one = torch.ones(1, 1, dtype=torch.bool, device=device)
            inputs = target.chunk_inputs(sequence[:-1], 0, sequence[-1:], one,
                                         torch.zeros(1, dtype=torch.long, device=device))
            ids, positions, mask = inputs.ids, inputs.positions, inputs.mask
        hidden = skipping_forward(target.model, ids, positions, masks, cache, mask)
        stats.draft_forwards += 1
        logits = target.logits(hidden[-1:])[0]  # [V]
        drawn, q = sampler.draw(logits)
        token = int(drawn)
        if q is not None:
            qs.append(q)
        confidence = float(logits.softmax(dim=-1)[token])  # raw, untempered softmax: the stop rule's scale
        tokens.append(token)
        if confidence < gamma or token in eos:  # nothing after an EOS can be emitted
            break
    if cache is not None:
        cache.truncate(committed - 1)  # drop the scratch entries of the layers the draft ran
    return Drafts(tokens, torch.stack(qs) if qs else None, origin="layers")
