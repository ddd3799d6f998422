"""The paper's SPACE step written out directly from its layout table (docs/spec/SPACE.md §3.2): a reference.

The decoder runs the paper's chain as a mode of its one loop (`space.decoding.tree`, faithful mode). This is the
chain loop the project ran before that, kept as an independent oracle: its own layout (`space.layout`, the §3.2
table, the full extended sequence E on an uncached step), its own draft container and its own drafting, so a
test can check that the faithful mode gives the paper's tokens and steps (greedy, and the same samples for the
same seed under both sampling rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.decoding import parse_options
from space.decoding.common import DecodeResult, DecodeStats, Model, Run, check_prompt, fit_context
from space.decoding.verify import accept
from space.layout import ChunkLayout, step_layout
from space.tokens import resolve_mask_spec

FP16_MAX = 65504.0


@dataclass
class _Candidates:
    tokens: torch.Tensor  # [k]
    q: torch.Tensor | None = None  # [k, V]
    token_probs: torch.Tensor | None = None  # [k]

    @classmethod
    def dummy(cls, group_ids: torch.Tensor, vocab_size: int, sampling: bool) -> "_Candidates":
        if not sampling:
            return cls(group_ids.clone())
        q = torch.nn.functional.one_hot(group_ids, vocab_size).float()
        return cls(group_ids.clone(), q, torch.full(group_ids.shape, FP16_MAX, device=group_ids.device))

    @classmethod
    def chosen(cls, logits: torch.Tensor, tokens: torch.Tensor, sampler) -> "_Candidates":
        if not sampler.do_sample:
            return cls(tokens)
        q = sampler.probabilities(logits)
        return cls(tokens, q, q.gather(1, tokens[:, None])[:, 0])


@torch.inference_mode()
def paper_chain(model, input_ids: torch.Tensor, **options) -> DecodeResult:
    """SPACE's chain decoding of `input_ids` with `space.decode`'s options (`tree` is ignored: always the chain)."""
    options = fit_context(model, input_ids, parse_options("space", dict(options, tree=False)))
    check_prompt(model, input_ids)
    target = Model(model)
    spec = resolve_mask_spec(target.config, options.mask_id, options.mask_num, options.mask_diff)
    k, device = spec.mask_num, target.device
    group_ids = torch.tensor(spec.group_ids(k), device=device)
    layout = ChunkLayout.build(k, device)
    chunk_ids = layout.token_template(group_ids)
    run = Run.start(target, input_ids, options, DecodeStats(), cache_slack=layout.size)
    out, cache = run.out, run.cache
    candidates = _Candidates.dummy(group_ids, target.config.vocab_size, options.do_sample)
    sampler = run.sampler
    while True:
        n = out.length
        chunk_ids[0] = out.ids[n - 1]
        chunk_ids[layout.candidate_rows] = candidates.tokens
        if run.seen > 0:  # the cache holds x_0 .. x_{n-2}
            ids, positions = chunk_ids, layout.position_offsets + (n - 1)
            prefix = layout.allowed.new_ones(layout.size, n - 1)
            keys = torch.cat([torch.arange(n - 1, device=device), positions])
            mask = target.mask(torch.cat([prefix, layout.allowed], dim=1), positions, keys)
            base = 0
        else:  # the full extended sequence E
            ids = torch.cat([out.ids[: n - 1], chunk_ids])
            allowed, positions = step_layout(n, k)
            positions = positions.to(device)
            mask = target.mask(allowed.to(device), positions, positions)
            base = n - 1
        hidden = target.hidden(ids, positions, mask, cache)
        chunk_logits = target.logits(hidden[base:])
        accepted, bonus = accept(chunk_logits[layout.verify_rows], candidates.tokens, sampler, q=candidates.q, draft_probs=candidates.token_probs,
                                 sampling_mode=options.sampling_mode)
        run.commit(candidates.tokens[:accepted].tolist() + [bonus], accepted)
        if out.finished:
            return run.result()
        if cache is not None:
            cache.compact(n, (n - 1) + layout.candidate_rows[:accepted])
        rows = layout.group_rows(accepted)
        draft_logits = chunk_logits[rows]
        if target.sampler_head is not None and options.sampler_head:
            draft_logits, tokens = target.chain_drafts(hidden[base:][rows], draft_logits, bonus, sampler.pick)
            candidates = _Candidates.chosen(draft_logits, torch.tensor(tokens, device=device), sampler)
        elif options.do_sample:
            q = sampler.probabilities(draft_logits)
            candidates = _Candidates.chosen(draft_logits, sampler.sample(q), sampler)
        else:
            candidates = _Candidates(draft_logits.argmax(dim=-1))
