"""SPACE's decoding loop: verify a tree of candidates and draft the next chain, in one forward per step.

Each step (shape from `space.decoding.tree_shape`, rows from `space.decoding.tree_layout`):

1. plan the tree under the last committed token from the chain the previous step drafted, each chain slot's
   runners-up, the copies that continue the longest n-gram match of the context (`space.decoding.retrieval`), and the
   measured acceptance;
2. one forward over the tree's nodes and its mask groups, after the prefix the cache has not seen;
3. accept the longest path the target agrees with and the next token after it;
4. commit, keep the accepted nodes' KV entries (`CompactCache.compact`), update the acceptance rates;
5. draft the next chain (and its runners-up) from the last accepted node's group, or from the slots the nearest
   grouped ancestor drafted past the accepted depth.

The paper's chain (`tree=False`, or its published sampling rule) is this loop in its faithful mode: the chain
alone, a group on every node, the first step verifying mask ids in the candidate slots (the paper's dummy
draft), and the chain's own acceptance rules (`space.decoding.verify.accept`: greedy, exact speculative
sampling, or the paper's rule). Its step is the §3.2 layout row for row, and it reports the shared statistics.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch

from space.decoding.batch import run_rows
from space.decoding.common import DecodeStats, Model, Run
from space.decoding.drafts import Drafts
from space.decoding.retrieval import NgramIndex
from space.decoding.row_cost import CostCurve, device_curve, measured_curve
from space.decoding.sampling import Sampler
from space.decoding.tree_layout import TreeLayout, tree_layout
from space.decoding.tree_shape import (
    DEVICE_MAX_ROWS,
    AcceptanceRates,
    DraftTree,
    ShapeConfig,
    next_chain_source,
    plan_steps,
    record_outcome,
)
from space.decoding.verify import accept, accept_tree

FP16_MAX = 65504.0  # the paper's draft probability for the first step's mask ids: its rule always rejects them


@dataclass
class TreeStats(DecodeStats):
    """Per step, besides the shared counts: rows fed (the tree's width with its masks) and the accepted tokens
    each branch proposed (`chain` is the rest of `accepted_per_step`)."""

    rows_per_step: list[int] = field(default_factory=list)
    copy_accepted_per_step: list[int] = field(default_factory=list)
    topk_accepted_per_step: list[int] = field(default_factory=list)


def shape_config(target: Model, options, k: int) -> ShapeConfig:
    """The step budget: the options' cost curve and row cap, else the device's row cap and its stored curve
    (`cost_curve="measure"`: timed on this model once). The paper's chain feeds everything at any price."""
    faithful = not options.uses_tree
    kind = target.device.type if target.device.type in DEVICE_MAX_ROWS else "cuda"
    max_rows = max(options.max_tree_rows if options.max_tree_rows is not None else DEVICE_MAX_ROWS[kind], 1 + k)
    if faithful:
        curve = CostCurve.from_points({1: 1.0})
    elif options.cost_curve is None:
        curve = device_curve(target.device, target.dtype)
    elif options.cost_curve == "measure":
        curve = measured_curve(target, max_rows)
    else:
        curve = (options.cost_curve if isinstance(options.cost_curve, CostCurve)
                 else CostCurve.from_points(options.cost_curve))
    return ShapeConfig(k=k, price=curve.price, max_rows=max_rows, copy=not faithful and options.copy_tokens > 0,
                       topk=not faithful and options.branch_width > 0, faithful=faithful)


def first_chain(group_ids: torch.Tensor, config: ShapeConfig, sampling: bool, vocab_size: int) -> Drafts:
    """The first step's chain. Nothing was drafted yet: the tree verifies none; the paper's chain verifies the mask
    ids in its candidate slots, drafted with certainty (a one-hot q, so exact sampling stays exact)."""
    if not config.faithful:
        return Drafts()
    q = torch.nn.functional.one_hot(group_ids, vocab_size).float() if sampling else None
    return Drafts(group_ids.tolist(), q, origin="masks")


def draft_chain(target: Model, hidden_rows: torch.Tensor, logits: torch.Tensor, first_slot: int, previous_token: int,
                sampler: Sampler, use_head: bool, branch_width: int) -> tuple[Drafts, list[Drafts]]:
    """The next chain from a group's mask rows (`hidden_rows` `[k, H]`, `logits` `[k, V]`), slots `first_slot..`:
    argmax or one sample per slot, or (`use_head`) slot by slot through the model's sampler head, each slot
    conditioned on the token picked before it, the first on `previous_token`; and each slot's `branch_width`
    runners-up."""
    logits, hidden_rows = logits[first_slot:], hidden_rows[first_slot:]
    if logits.shape[0] == 0:
        return Drafts(slot=first_slot), []
    if use_head:
        logits, tokens = target.chain_drafts(hidden_rows, logits, previous_token, sampler.pick)
        q = sampler.probabilities(logits) if sampler.do_sample else None
    else:
        ids, q = sampler.draw(logits)
        tokens = ids.tolist()
    runners_up = []
    if branch_width > 0:
        # a fixed number per slot, whether or not the drawn token is among the slot's best (exact sampling); a
        # width past the vocabulary offers every other token
        best_tokens = logits.topk(min(branch_width + 1, logits.shape[-1]), dim=-1).indices.tolist()
        for i, best in enumerate(best_tokens):
            others = [token for token in best if token != tokens[i]][:branch_width]
            runners_up += [Drafts([token], origin="topk", slot=first_slot + i, rank=rank, after=i)
                           for rank, token in enumerate(others, start=1)]
    return Drafts(tokens, q, origin="chain", slot=first_slot), runners_up


@functools.lru_cache(maxsize=256)
def layout_on(parents: tuple[int, ...], grouped: tuple[bool, ...], k: int, device: torch.device) -> TreeLayout:
    """`tree_layout` on `device`, kept per shape: the paper's chain repeats one shape, trees repeat a few."""
    layout = tree_layout(list(parents), list(grouped), k)
    return TreeLayout(layout.allowed.to(device), layout.position_offsets.to(device), layout.node_rows.to(device),
                      {node: rows.to(device) for node, rows in layout.group_rows.items()}, layout.depths)


def verify(node_logits: torch.Tensor, tree: DraftTree, tokens: list[int], chain: Drafts, config: ShapeConfig,
           sampler: Sampler, sampling_mode: str) -> tuple[list[int], int]:
    """The accepted path (nodes after the root) and the next token; `tokens` are the tree's. A tree by
    multi-candidate acceptance (`accept_tree`); the paper's chain by the chain's rules, with the first step's mask
    ids at the paper's draft probability under its own sampling rule."""
    if not config.faithful:
        return accept_tree(node_logits, tokens, tree.candidates, sampler)
    fed = len(tokens) - 1  # the chain's first `fed` tokens (all of them unless positions were limited)
    drafts = chain.ids(node_logits.device)[:fed]
    q = None if chain.q is None else chain.q[:fed]
    draft_probs = None
    if q is not None and sampling_mode == "original":  # the exact rule reads q itself
        draft_probs = (torch.full(drafts.shape, FP16_MAX, device=drafts.device) if chain.origin == "masks"
                       else q.gather(1, drafts[:, None])[:, 0])
    accepted, token = accept(node_logits, drafts, sampler, q=q, draft_probs=draft_probs, sampling_mode=sampling_mode)
    return list(range(1, accepted + 1)), token  # the chain's nodes are 1..k in order


class TreeRow:
    """One prompt's SPACE step as a row of the batch loop (`space.decoding.batch`); `k` is the mask group width,
    `group_ids` the group's ids, `rates` the acceptance its trees are planned from."""

    def __init__(self, target: Model, input_ids: torch.Tensor, options, k: int, group_ids: torch.Tensor,
                 config: ShapeConfig, rates: AcceptanceRates):
        self.target, self.options, self.k, self.group_ids, self.config, self.rates = (
            target, options, k, group_ids, config, rates)
        self.run = Run.start(target, input_ids, options, DecodeStats() if config.faithful else TreeStats(),
                             own_cache=False)
        self.index = None
        if config.copy:
            self.index = NgramIndex(options.copy_ngram)
            self.index.extend(self.run.out.committed().tolist())
        self.chain = first_chain(group_ids, config, options.do_sample, target.config.vocab_size)
        self.runners_up: list[Drafts] = []
        self.use_head = target.sampler_head is not None and options.sampler_head

    @property
    def finished(self) -> bool:
        return self.run.finished

    @property
    def slack(self) -> int:
        """Room for a step's uncommitted rows: the paper's step has 1 + k(k+2), a tree at most max_rows and its
        groups."""
        k = self.k
        return 1 + k * (k + 2) if self.config.faithful else self.config.max_rows + k * (k + 2) + 1

    def plan(self):
        # 1. plan: copies from the root and after each prefix of the chain
        out, chain = self.run.out, self.chain
        n = out.length
        copies = [] if self.index is None else [self.index.lookup(self.options.copy_tokens, tuple(chain.tokens[:depth]))
                                                 for depth in range(len(chain) + 1)]
        limit = self.target.position_limit(n)  # the root sits at n - 1: no row deeper than the limit allows
        return plan_steps(int(out.ids[n - 1]), chain, self.runners_up, copies, self.rates, self.config,
                          sampled=chain.q is not None, max_depth=None if limit is None else limit - (n - 1))

    def feed(self, seen: int, tree: DraftTree):
        # 2. one forward: the tree and its groups (rooted at x_{n-1}), after the prefix the cache has not seen
        out, device = self.run.out, self.target.device
        self.n, self.tree, self.tokens = out.length, tree, tree.tokens  # tokens: a property that builds the list
        layout = self.layout = layout_on(tuple(tree.parents), tuple(tree.grouped), self.k, device)
        chunk_ids = torch.zeros(layout.size, dtype=torch.long, device=device)
        chunk_ids[layout.node_rows] = torch.tensor(self.tokens, device=device)
        for rows in layout.group_rows.values():
            chunk_ids[rows] = self.group_ids
        inputs = self.target.chunk_inputs(out.ids[: self.n - 1], seen, chunk_ids, layout.allowed,
                                          layout.position_offsets)
        return inputs, inputs.unseen  # lm_head on the chunk's rows

    def take(self, hidden: torch.Tensor, logits: torch.Tensor):
        """`hidden` `[rows, H]` and `logits` `[rows, V]`: the chunk's."""
        run, out, tree, layout, config, n = self.run, self.run.out, self.tree, self.layout, self.config, self.n
        # 3. verify
        path, token = verify(logits[layout.node_rows], tree, self.tokens, self.chain, config, run.sampler,
                             self.options.sampling_mode)

        # 4. commit (cut at EOS and at max_new_tokens), learn the rates (the tree's)
        emitted = run.commit([self.tokens[u] for u in path] + [token], len(path))
        if not config.faithful:  # the tree's own statistics, and the rates its shape is planned from
            kinds = [tree.nodes[u].kind for u in path[: min(len(path), emitted)]]
            run.stats.rows_per_step.append(layout.size)
            run.stats.copy_accepted_per_step.append(kinds.count("copy"))
            run.stats.topk_accepted_per_step.append(kinds.count("topk"))
            record_outcome(tree, path, self.rates)
        if out.finished:
            return None
        if self.index is not None:
            self.index.extend(out.ids[n : out.length].tolist())

        # 5. the next chain
        source = next_chain_source(tree, path)
        if source is None:
            self.chain, self.runners_up = Drafts(), []
        else:
            node, first_slot = source
            rows = layout.group_rows[node]
            self.chain, self.runners_up = draft_chain(self.target, hidden[rows], logits[rows], first_slot,
                                                      int(out.ids[out.length - 1]), run.sampler, self.use_head,
                                                      0 if config.faithful else self.options.branch_width)

        # 6. cache: the committed prefix, then the accepted nodes (now x_n ..)
        return n, (n - 1) + layout.node_rows[path]


def generate_tree(target: Model, prompts: list[torch.Tensor], options: list, k: int, group_ids: torch.Tensor,
                  batch_size: int | None = None) -> list[Run]:
    """Decode every prompt (`[1, n_i]`, with its own options) with SPACE in one forward per step, at most
    `batch_size` at once; `k` is the mask group width, `group_ids` the group's ids. `options[0].uses_tree` chooses
    the candidate tree, else the paper's chain. One prompt's rates are `acceptance` itself (carried across calls);
    several prompts each plan from a copy of it, and it learns what all of them measured."""
    config = shape_config(target, options[0], k)
    carried = options[0].acceptance
    if carried is None:
        rates = [AcceptanceRates() for _ in prompts]
    elif len(prompts) == 1:
        rates = [carried]
    else:
        rates = [copy.deepcopy(carried) for _ in prompts]
    rows = [TreeRow(target, prompt, row_options, k, group_ids, config, row_rates)
            for prompt, row_options, row_rates in zip(prompts, options, rates)]
    run_rows(target, rows, options[0].use_cache, max(row.run.out.ids.numel() + row.slack for row in rows),
             config.price, config.max_rows, batch_size)
    if carried is not None and len(prompts) > 1:
        carried.absorb(rates)
    return [row.run for row in rows]
