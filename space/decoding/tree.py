"""SPACE with a candidate tree: verify SPACE's chain, its runners-up and a copy from the context in one forward.

Each step (shape from `space.decoding.tree_shape`, rows from `space.tree_layout`):

1. plan the tree under the last committed token from the chain the previous step drafted, the copy that
   continues the longest n-gram match of the context (`space.retrieval`), and the measured acceptance;
2. one forward over the tree's nodes and its mask groups;
3. accept the longest path the target agrees with (`space.decoding.verify.accept_tree`: greedy, or exact
   multi-candidate speculative sampling) and the next token after it;
4. commit, keep the accepted nodes' KV entries (`CompactCache.compact`), update the acceptance rates;
5. draft the next chain from the last accepted node's group, or from the slots the nearest grouped
   ancestor drafted past the accepted depth.

With `faithful=True` (the chain alone, a group on every node, the first step verifying mask ids) this is
the paper's step that `space.decoding.space` runs for `tree=False`, and both give the same tokens and the
same steps (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from space.decoding.common import DecodeStats, Model, Run
from space.decoding.sampling import draft_picker, probabilities, sample
from space.decoding.row_cost import CostCurve, device_curve, measured_curve
from space.decoding.tree_shape import (DEVICE_MAX_ROWS, AcceptanceRates, Chain, ShapeConfig, next_chain_source,
                                       plan_tree, record_outcome)
from space.decoding.verify import accept_tree
from space.retrieval import NgramIndex
from space.tree_layout import tree_layout


@dataclass
class TreeStats(DecodeStats):
    """Per step, besides the shared counts: rows fed (the tree's width with its masks) and the accepted tokens
    each branch proposed (`chain` is the rest of `accepted_per_step`)."""

    rows_per_step: list[int] = field(default_factory=list)
    copy_accepted_per_step: list[int] = field(default_factory=list)
    topk_accepted_per_step: list[int] = field(default_factory=list)


def shape_config(target: Model, options, k: int, faithful: bool) -> ShapeConfig:
    """The step budget: the options' cost curve and row cap, else the device's row cap and its stored curve
    (`cost_curve="measure"`: timed on this model once)."""
    kind = target.device.type if target.device.type in DEVICE_MAX_ROWS else "cuda"
    max_rows = max(options.max_tree_rows if options.max_tree_rows is not None else DEVICE_MAX_ROWS[kind], 1 + k)
    if faithful:
        curve = CostCurve.from_points({1: 1.0})
    elif options.cost_curve is None:
        curve = device_curve(target.device)
    elif options.cost_curve == "measure":
        curve = measured_curve(target, max_rows)
    else:
        curve = options.cost_curve if isinstance(options.cost_curve, CostCurve) else CostCurve.from_points(options.cost_curve)
    return ShapeConfig(k=k, price=curve.price, max_rows=max_rows, copy=not faithful and options.copy_tokens > 0,
                       topk=not faithful and options.branch_width > 0, groups_everywhere=faithful)


def draft_chain(logits: torch.Tensor, first_slot: int, options, branch_width: int, generator, refine=None) -> Chain:
    """The next chain from a group's mask logits `[k, V]`, slots `first_slot..`: argmax or one sample per slot,
    with each slot's `branch_width` runners-up. `refine(logits) -> (logits, tokens)` picks the slots one by one
    instead (the sampler head, `Model.chain_drafts`)."""
    logits = logits[first_slot:]
    if logits.shape[0] == 0:
        return Chain(first_slot=first_slot)
    q = None
    if refine is not None:
        logits, tokens = refine(logits)
        tokens = torch.tensor(tokens)
        if options.do_sample:
            q = probabilities(logits, options.temperature, options.top_k, options.top_p)
    elif options.do_sample:
        q = probabilities(logits, options.temperature, options.top_k, options.top_p)
        tokens = sample(q, generator)
    else:
        tokens = logits.argmax(dim=-1)
    alternatives = []
    if branch_width > 0:
        alternatives = logits.topk(branch_width + 1, dim=-1).indices.tolist()
    return Chain(tokens.tolist(), first_slot, alternatives, q)


def generate_tree(target: Model, input_ids: torch.Tensor, options, k: int, group_ids: torch.Tensor,
                  faithful: bool = False) -> Run:
    """Decode with candidate trees; `k` is the mask group width, `group_ids` the group's ids. `faithful`: every
    chain candidate grouped, nothing else offered, the first step verifying mask ids, as the paper's chain."""
    device = target.device
    config = shape_config(target, options, k, faithful)
    rates = options.acceptance if options.acceptance is not None else AcceptanceRates()
    run = Run.start(target, input_ids, options, TreeStats(), cache_slack=config.max_rows + k * (k + 2) + 1)
    out, cache = run.out, run.cache
    index = NgramIndex(options.copy_ngram)
    index.extend(out.committed().tolist())
    chain = Chain(group_ids.tolist(), 0) if faithful else Chain()  # the faithful first step verifies mask ids
    picker = draft_picker(options.do_sample, options.temperature, options.top_k, options.top_p, run.generator)

    while True:
        n = out.length
        copies = []
        if config.copy:  # from the root, and after each prefix of the chain
            copies = [index.lookup(options.copy_tokens, tuple(chain.tokens[:depth])) for depth in range(len(chain.tokens) + 1)]
        tree = plan_tree(int(out.ids[n - 1]), chain, copies, rates, config, sampled=chain.q is not None)
        tokens = tree.tokens  # a property that builds the list: read once
        layout = tree_layout(tree.parents, tree.grouped, k)
        node_rows = layout.node_rows.to(device)
        node_tokens = torch.tensor(tokens, device=device)
        chunk_ids = node_tokens.new_zeros(layout.size)
        chunk_ids[node_rows] = node_tokens
        for rows in layout.group_rows.values():
            chunk_ids[rows.to(device)] = group_ids
        allowed = layout.allowed.to(device)
        offsets = layout.position_offsets.to(device)

        # 1. one forward: the tree and its groups, after the prefix the cache has not seen
        seen = run.seen
        positions = torch.cat([torch.arange(seen, n - 1, device=device), offsets + (n - 1)])
        ids = torch.cat([out.ids[seen : n - 1], chunk_ids])
        unseen = n - 1 - seen
        prefix = torch.ones(positions.shape[0], n - 1, dtype=torch.bool, device=device)
        if unseen:  # the uncached committed rows see the prefix causally, never the chunk
            prefix[:unseen] = torch.ones(unseen, n - 1, dtype=torch.bool, device=device).tril(diagonal=seen)
        chunk_cols = torch.zeros(positions.shape[0], layout.size, dtype=torch.bool, device=device)
        chunk_cols[unseen:] = allowed
        keys = torch.cat([torch.arange(n - 1, device=device), offsets + (n - 1)])
        mask = target.mask(torch.cat([prefix, chunk_cols], dim=1), positions, keys)
        hidden = target.hidden(ids, positions, mask, cache)
        logits = target.logits(hidden[unseen:])  # [rows, V]

        # 2. verify
        path, token = accept_tree(logits[node_rows], tokens, tree.candidates, options, run.generator)
        emitted = run.commit([tokens[u] for u in path] + [token], len(path))
        kinds = [tree.nodes[u].kind for u in path[: min(len(path), emitted)]]
        stats = run.stats
        stats.rows_per_step.append(layout.size)
        stats.copy_accepted_per_step.append(kinds.count("copy"))
        stats.topk_accepted_per_step.append(kinds.count("topk"))
        record_outcome(tree, path, rates)
        if out.finished:
            return run
        index.extend(out.ids[n : out.length].tolist())

        # 3. cache: the committed prefix, then the accepted nodes (now x_n ..)
        if cache is not None:
            cache.compact(n, (n - 1) + node_rows[path])

        # 4. the next chain
        source = next_chain_source(tree, path)
        if source is None:
            chain = Chain()
        else:
            node, first_slot = source
            rows = layout.group_rows[node].to(device)
            refine = None
            if target.sampler_head is not None and options.sampler_head:  # slot by slot, after the bonus token
                slots, last = hidden[unseen:][rows][first_slot:], int(out.ids[out.length - 1])
                refine = lambda chain_logits: target.chain_drafts(slots, chain_logits, last, picker)  # noqa: E731
            chain = draft_chain(logits[rows], first_slot, options, 0 if faithful else options.branch_width,
                                run.generator, refine)
