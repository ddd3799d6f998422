"""The paper's SPACE step written out directly from its layout table (docs/spec/SPACE.md §3.2): a reference.

The decoder runs the paper's chain as a mode of its one loop (`space.decoding.tree`, faithful mode). This is the
chain loop the project ran before that, kept as an independent oracle: its own layout (below, the §3.2 table,
the full extended sequence E on an uncached step), its own draft container and its own drafting, so a test can
check that the faithful mode gives the paper's tokens and steps (greedy, and the same samples for the same seed
under both sampling rules), and that the tree's layout of a fully grouped chain is this one.

The layout of one step:
The per-step input layout of SPACE auto-correct decoding (docs/spec/SPACE.md §3.2), as pure functions.

One step extends the `n` committed tokens with `k` candidates and `k+1` private groups of `k` masks:

    E = [x_0 .. x_{n-1}] [G_0] c_0 [G_1] c_1 ... c_{k-1} [G_k]        T = n + k(k+2)

| item                 | index in E          | position  | sees                                      |
|----------------------|---------------------|-----------|-------------------------------------------|
| committed x_t        | t                   | t         | x_0..x_t                                  |
| group g, mask j      | n + g(k+1) + j      | n + g + j | committed, c_0..c_{g-1}, own masks 0..j   |
| candidate c_i        | n + (i+1)(k+1) - 1  | n + i     | committed, c_0..c_i (no masks)            |

So every candidate sees exactly its AR context (its logits verify the next candidate), and group g
sees the prefix plus the first g candidates, then masks at consecutive positions, as in training.

With the KV cache only the chunk from the last committed token on is fed: `1 + k(k+2)` rows whose
pattern does not depend on `n`. `ChunkLayout` precomputes that pattern and the row indices the
decoder reads, once per `k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.decoding import parse_options
from space.decoding.common import DecodeResult, DecodeStats, Model, Run, check_prompt, fit_context
from space.decoding.verify import accept
from space.tokens import resolve_mask_spec

FP16_MAX = 65504.0


def step_layout(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention pattern and position ids of the full extended sequence of one step.

    Returns `allowed` (bool `[T, T]`, True where query row may attend to key column) and
    `positions` (long `[T]`), with `T = n + k(k+2)`.
    """
    total = n + k * (k + 2)
    index = torch.arange(total)
    allowed = index[None, :] <= index[:, None]  # causal
    positions = index.clone()
    for g in range(k + 1):
        start = n + g * (k + 1)  # first mask of group g
        allowed[start + k :, start : start + k] = False  # the group is private to itself
        positions[start : start + k] = n + g + torch.arange(k)
    for i in range(k):
        positions[candidate_index(n, k, i)] = n + i
    return allowed, positions


def candidate_index(n: int, k: int, i: int) -> int:
    """Index in E of candidate `c_i`."""
    return n + (i + 1) * (k + 1) - 1


def group_index(n: int, k: int, g: int, j: int = 0) -> int:
    """Index in E of mask `j` of group `g`."""
    return n + g * (k + 1) + j


def retained_cache_indices(n_old: int, accepted: int, k: int) -> list[int]:
    """Indices (in the previous step's E) of the KV entries to keep after `accepted` candidates passed.

    The committed tokens `0..n_old-1` plus the accepted candidates: their KV was computed with the
    exact AR context and position. Masks, rejected candidates and the unfed bonus token are dropped.
    """
    return list(range(n_old)) + [candidate_index(n_old, k, i) for i in range(accepted)]


@dataclass
class ChunkLayout:
    """The fixed pattern of the fed chunk `[x_{n-1}, G_0, c_0, G_1, ..., c_{k-1}, G_k]` for one `k`.

    Local row 0 is the last committed token; the chunk starts at absolute index `n-1` of E.
    """

    k: int
    allowed: torch.Tensor  # [q, q] bool, q = 1 + k(k+2)
    position_offsets: torch.Tensor  # [q] long; absolute position = n - 1 + offset
    candidate_rows: torch.Tensor  # [k] local rows of c_0..c_{k-1}
    verify_rows: torch.Tensor  # [k+1] rows whose logits predict positions n .. n+k

    @classmethod
    def build(cls, k: int, device: torch.device | str = "cpu") -> "ChunkLayout":
        allowed, positions = step_layout(1, k)  # one committed token = the chunk's row 0
        candidate_rows = torch.tensor([candidate_index(0, k, i) + 1 for i in range(k)])
        verify_rows = torch.cat([torch.zeros(1, dtype=torch.long), candidate_rows])
        return cls(
            k=k,
            allowed=allowed.to(device),
            position_offsets=positions.to(device),
            candidate_rows=candidate_rows.to(device),
            verify_rows=verify_rows.to(device),
        )

    @property
    def size(self) -> int:
        return 1 + self.k * (self.k + 2)

    def group_rows(self, g: int) -> torch.Tensor:
        """Local rows of the `k` masks of group `g` (group `g` drafts after `g` accepted candidates)."""
        start = 1 + g * (self.k + 1)
        return torch.arange(start, start + self.k, device=self.allowed.device)

    def token_template(self, group_ids: torch.Tensor) -> torch.Tensor:
        """Chunk ids with every group filled by `group_ids` `[k]`; row 0 and candidate rows are set per step."""
        ids = group_ids.new_zeros(self.size)
        for g in range(self.k + 1):
            ids[self.group_rows(g)] = group_ids
        return ids


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
        accepted, bonus = accept(chunk_logits[layout.verify_rows], candidates.tokens, sampler, q=candidates.q,
                                 draft_probs=candidates.token_probs, sampling_mode=options.sampling_mode)
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
