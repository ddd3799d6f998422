"""SDSAT decoding (Liu & Zhu 2024, arXiv 2403.18647; docs/spec/SDSAT.md §4-§5): draft with adaptive tokens, then verify.

A model fine-tuned with semantic adaptive tokens (SATs, `space.tokens.SatSpec`) predicts future tokens at
SAT positions. Each round costs two forwards of the same model:

1. draft: `[x_last, SAT × k]` (after the uncached part of the committed sequence). The row at `x_last`
   gives the next token `t` exactly (causal attention hides the SATs from it); SAT row j drafts the
   token j places after `t`;
2. verify: `[t, d_1 .. d_k]`, accepted by greedy prefix match or exact speculative sampling
   (`space.decoding.verify`); the row after the last accepted draft gives the bonus token.

So a round emits a + 2 tokens (2 .. k+2) for two forwards, and greedy output equals greedy AR decoding.
The first round's draft forward doubles as the prefill (prompt, then the SATs): one forward fewer than
the reference, same output. Near `max_new_tokens` a round drafts only what the budget can still take.
The KV cache keeps committed tokens only: SAT entries are dropped after the draft forward, rejected
drafts after verification (`CompactCache.truncate` / `compact`); after a round it holds every committed
token but the bonus.

Sampling (`sampling_mode`):

* "exact" (default): drafts are sampled from the SAT rows' distributions `q_j` (the target's
  temperature, top-k and top-p) and verified by speculative sampling. A SAT row does not depend on the
  drafts before it, which speculative sampling allows; the output is distributed as sampling from the
  model (docs/spec/SDSAT.md §5.4 [ours], chain form).
* "original": the reference's token tree (docs/spec/SDSAT.md §5.2-§5.3): a fixed template per depth, the nodes of a
  depth taken from that depth's candidates (drawn without replacement), all paths scored in one
  tree-masked forward, and *sample-and-match* acceptance: an independent target draw per path and
  position, the longest matching path wins. Biased toward drafted tokens (docs/spec/SDSAT.md §5.4); kept for comparison.
  Fixed here: one temperature/top-k/top-p everywhere (the reference drops top-k when verifying), no
  failure when fewer tokens survive filtering than candidates are needed, padded path slots never match
  (the reference's -1 padding can match the last node), and EOS cuts the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from space.cache import CompactCache
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Output, Run
from space.decoding.drafts import Drafts
from space.decoding.sampling import Sampler
from space.decoding.verify import accept, check_sampling_mode
from space.errors import SpaceError
from space.tokens import add_sat_tokens, read_sat_spec, resolve_sat_spec

# The reference's tree templates (decoders/model/utils.py, `tree_depth_{5,7,9,11,13}`), one string per
# depth. Entry "21" at depth 4 is the path [0, 0, 2, 1] (left-padded with zeros): candidate 1 of depth 4
# under candidate 2 of depth 3 under [0, 0]. The first three depths are shared by every template.
_FIRST = ["0 1 2 3", "0 1 2 10 11 20 21 30", "0 1 2 10 11 20 21 100"]
_WIDE, _SIX = "0 1 2 10 11 20 21 100", "0 1 2 10 11 20"
TREE_LEVELS = {
    5: _FIRST + ["0 1 2 10 11", "0 1 2"],
    7: _FIRST + [_SIX, "0 1 2 10 11", "0 1 2", "0 1"],
    9: _FIRST + [_SIX, _SIX, "0 1 2 10 11", "0 1 2 10", "0 1 2", "0 1"],
    11: _FIRST + [_WIDE, _SIX, _SIX, _SIX, "0 1 2 10 11", "0 1 2 10", "0 1 2", "0 1"],
    13: _FIRST + [_WIDE, _WIDE, _WIDE, _SIX, _SIX, _SIX, "0 1 2 10 11", "0 1 2 10", "0 1 2", "0 1"],
}
MAX_TREE_DEPTH = max(TREE_LEVELS)
UNTRAINED_SAT_NUM = 5  # the k of an untrained adaptive token added to a model that has none (`prepare`)


@dataclass
class SdsatOptions(DecodeOptions):
    """SDSAT's options; None takes the model config's."""

    sat_num: int | None = None  # k adaptive tokens per draft step
    sat_id: int | None = None
    sampling_mode: str = "exact"  # "exact" speculative sampling or the reference's token tree, "original"

    def validate(self) -> None:
        super().validate()
        check_sampling_mode(self.sampling_mode)
        if self.sat_num is not None and self.sat_num < 1:
            raise SpaceError(f"sat_num must be >= 1 (got {self.sat_num})")
        if self.sat_num is not None and self.do_sample and self.sampling_mode == "original":
            build_tree(self.sat_num)  # an unsupported tree depth is named before the model is looked at


@dataclass
class SdsatStats(DecodeStats):
    """`DecodeStats` (one entry per forward: the draft forward emits `t`, verification a + 1) plus rounds."""

    tokens_per_round: list[int] = field(default_factory=list)
    drafted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(self.drafted_per_round)
        return sum(self.accepted_per_step) / drafted if drafted else 0.0


@dataclass(frozen=True)
class Tree:
    """A draft tree: node 0 is the root (`t`), nodes 1.. the template's paths in the reference's order."""

    depth: torch.Tensor  # [T] depth of each node (root 0)
    index: torch.Tensor  # [T] which candidate of its depth a node holds (root 0)
    allowed: torch.Tensor  # [T, T] bool: a node sees the root, its ancestors and itself
    paths: torch.Tensor  # [P, D+1] node ids root -> leaf, -1 after a short leaf
    needed: list[int]  # candidates to draw per depth 0..D

    @property
    def size(self) -> int:
        return self.depth.numel()


@lru_cache(maxsize=None)
def build_tree(depth: int) -> Tree:
    """The template for `depth` (the next larger one cut to `depth` when the reference has none)."""
    if depth > MAX_TREE_DEPTH:
        raise SpaceError(
            f"sampling_mode='original' has token trees up to depth {MAX_TREE_DEPTH} (the reference's); "
            f"use sat_num <= {MAX_TREE_DEPTH} or sampling_mode='exact'"
        )
    levels = TREE_LEVELS[min(d for d in TREE_LEVELS if d >= depth)][:depth] if depth else []
    paths = [tuple(int(c) for c in entry.zfill(d)) for d, level in enumerate(levels, 1) for entry in level.split()]
    paths.sort(key=lambda path: (len(path), path))  # the reference's node order
    node = {path: i + 1 for i, path in enumerate(paths)}
    size = len(paths) + 1
    allowed = torch.eye(size, dtype=torch.bool)
    allowed[:, 0] = True
    for path, i in node.items():
        for end in range(1, len(path)):
            allowed[i, node[path[:end]]] = True
    # Leaves, deepest and last first: the reference's row order, which decides ties between paths
    leaves = [p for p in reversed(paths) if not any(q[: len(p)] == p and len(q) > len(p) for q in paths)]
    rows = [[0] + [node[p[:end]] for end in range(1, len(p) + 1)] for p in leaves] or [[0]]
    width = max(len(r) for r in rows)
    needed = [1] + [max(p[-1] for p in paths if len(p) == d) + 1 for d in range(1, depth + 1)]
    return Tree(
        depth=torch.tensor([0] + [len(p) for p in paths]),
        index=torch.tensor([0] + [p[-1] for p in paths]),
        allowed=allowed,
        paths=torch.tensor([r + [-1] * (width - len(r)) for r in rows]),
        needed=needed,
    )


def prepare(model, tokenizer, options: list[dict], untrained: bool = False) -> str | None:
    """Before any timed decode: SDSAT needs its adaptive token. With `untrained` (a base model shipped without a
    trained one) and no SAT id asked for, an untrained one for every run's k is added: SDSAT stays lossless but
    few drafts are accepted, which the returned note says. Then each run's SAT id and k are checked."""
    added = read_sat_spec(model.config) is None and untrained and all(o.get("sat_id") is None for o in options)
    if added:
        widths = [o["sat_num"] for o in options if o.get("sat_num") is not None]
        add_sat_tokens(model, tokenizer, sat_num=max([UNTRAINED_SAT_NUM] + widths))
    for o in options:
        resolve_sat_spec(model.config, o.get("sat_id"), o.get("sat_num"))
    if added:
        return ("note: the model has no trained SDSAT adaptive token here; an untrained one was added, so SDSAT "
                "output equals AR but few drafts are accepted")
    return None


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: SdsatOptions) -> DecodeResult:
    target = Model(model)
    spec = resolve_sat_spec(target.config, options.sat_id, options.sat_num)
    k = spec.sat_num
    use_tree = options.do_sample and options.sampling_mode == "original"
    if use_tree:
        build_tree(k)  # an unsupported depth fails before any forward
    device = target.device
    # a round never drafts more than the budget, so neither does the cache's room for SATs and drafts
    slack = build_tree(k).size if use_tree else min(k, options.max_new_tokens) + 1
    run = Run.start(target, input_ids, options, SdsatStats(), cache_slack=slack)
    out, cache, sampler, stats = run.out, run.cache, run.sampler, run.stats

    while not out.finished:
        n = out.length  # x_0 .. x_{n-1} committed; the cache holds x_0 .. x_{n-2} (nothing before the first round)
        # room left after t and the bonus, and under the RoPE position limit of both forwards (the draft forward
        # feeds up to n - 1 + width, the verify forward, after t, up to n + width)
        width = max(0, min(k, out.max_new_tokens - out.generated - 2, *_rows_below(target.position_limit(n), n - 1),
                           *_rows_below(target.position_limit(n + 1), n)))

        # 1. draft forward: [what the cache has not seen, SAT x width]
        sats = torch.full((width,), spec.sat_id, dtype=torch.long, device=device)
        hidden = run.forward(sats)
        draft_logits = target.logits(hidden[-(width + 1):])  # [w+1, V]: row 0 at x_{n-1}, row j at SAT j

        # 2. the exact next token t from row 0, the drafts from the SAT rows
        if use_tree:
            tree = build_tree(width)
            q = sampler.probabilities(draft_logits)
            candidates = [_candidates(q[d], tree.needed[d], sampler.generator) for d in range(width + 1)]
            t = int(candidates[0][0])  # first of a draw without replacement: an exact sample
        else:  # the next token, then the drafts (two draws when sampling, in that order)
            t, (drafted, q) = int(sampler.draw(draft_logits[0])[0]), sampler.draw(draft_logits[1:])
            drafts = Drafts(drafted.tolist(), q, origin="sat")
        emitted = run.commit([t])
        if cache is not None:
            cache.truncate(n)  # keep x_{n-1}, drop the SATs
        if out.finished:
            stats.tokens_per_round.append(emitted)
            stats.drafted_per_round.append(0)
            break

        # 3. verify forward, 4. accept, 5. commit, 6. keep the accepted entries in the cache
        if use_tree:
            accepted_tokens, bonus, kept = _verify_tree(target, tree, candidates, out, n, run.seen, cache, sampler)
            accepted = len(accepted_tokens)
        else:
            hidden = run.forward(drafted)  # the drafts' ids, as drawn
            verify_logits = target.logits(hidden[-(width + 1):])  # [w+1, V]
            accepted, bonus = accept(verify_logits, drafted, sampler, q=drafts.q)
            accepted_tokens = drafts.tokens[:accepted]
        verified = run.commit(accepted_tokens + [bonus], accepted)
        stats.tokens_per_round.append(emitted + verified)
        stats.drafted_per_round.append(width)
        if cache is not None:
            if use_tree:
                cache.compact(n, n + kept)  # t and the accepted path's nodes, moved next to x_{n-1}
            else:
                cache.truncate(n + 1 + accepted)  # t and the accepted drafts
    return run.result()


def _rows_below(limit: int | None, first: int) -> tuple[int, ...]:
    """How many rows may follow one at position `first` without passing `limit` (none given when unlimited)."""
    return () if limit is None else (limit - first,)


def _candidates(probs: torch.Tensor, count: int, generator) -> torch.Tensor:
    """`count` distinct tokens drawn from `probs` `[V]` (repeating the first when fewer tokens are possible)."""
    available = int((probs > 0).sum())
    drawn = torch.multinomial(probs, min(count, available), replacement=False, generator=generator)
    return torch.cat([drawn, drawn[:1].expand(count - drawn.numel())])


def _verify_tree(target: Model, tree: Tree, candidates: list[torch.Tensor], out: Output, n: int, seen: int,
                 cache: CompactCache | None, sampler: Sampler) -> tuple[list[int], int, torch.Tensor]:
    """Score the tree rooted at t = x_n in one forward; sample-and-match along every path (docs/spec/SDSAT.md §5.3).
    The cache holds the first `seen` of x_0 .. x_{n-1}; every node sees all of them."""
    device = target.device
    depth, paths = tree.depth.to(device), tree.paths.to(device)
    tokens = torch.stack([candidates[d][i] for d, i in zip(tree.depth.tolist(), tree.index.tolist())])  # [T]
    inputs = target.chunk_inputs(out.ids[:n], seen, tokens, tree.allowed.to(device), depth)
    hidden = target.hidden(inputs.ids, inputs.positions, inputs.mask, cache)
    p = sampler.probabilities(target.logits(hidden[inputs.unseen:]))  # [T, V]

    parents, children = paths[:, :-1], paths[:, 1:]  # [P, D] each
    real = children >= 0
    # The target draw at a node matches the child's token with probability p(child): drawing u < p(child)
    # decides the match exactly as drawing the token would, without materialising P x D distributions.
    match_probability = p[parents.clamp(min=0), tokens[children.clamp(min=0)]]  # [P, D]
    u = torch.rand(match_probability.shape, generator=sampler.generator, device=device)
    lengths = ((u < match_probability) & real).int().cumprod(dim=1).sum(dim=1)  # [P]
    best = int(lengths.argmax())  # the first longest path, as the reference
    accepted = int(lengths[best])
    kept = paths[best, : accepted + 1]  # root and the accepted nodes
    bonus = int(sampler.sample(p[kept[-1]]))
    return tokens[kept[1:]].tolist(), bonus, kept
