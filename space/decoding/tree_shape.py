"""Which candidates a SPACE step feeds: the tree's shape, chosen each step from measured acceptance and the
measured price of a row.

Each step starts from every candidate it could feed, merged into one prefix trie under the last committed
token:

* `chain`: the k tokens SPACE's mask group drafted (slot i predicts i+1 tokens ahead);
* `topk`: the runners-up of each slot, as alternatives beside the chain token;
* `copy`: the tokens that followed the latest earlier occurrence of the context's longest suffix match
  (`space.decoding.retrieval`), after the root and after each prefix of the chain;
* a `group` of k masks on a node, which drafts the next step's chain when the accepted path ends there.

Each arrives as a `space.decoding.drafts.Drafts` whose `after` says how many chain tokens precede it.

Every candidate gets the probability that it is accepted: the product, down its path, of each branch kind's
running acceptance rate given its parent was accepted (`AcceptanceRates`, per chain slot, per copy depth and
match length, per top-k slot and rank), so a copy after a long match and a chain slot the model drafts well
are worth more. A step's value is `1 + sum of those probabilities` tokens; its price is the measured
time of a forward of that many rows over that of one row (`space.decoding.row_cost`). Candidates are
ordered greedily by value per row, each after its parent, and the step takes the prefix of that order with
the most tokens per unit price (EAGLE-2's and Sequoia's budgeted trees, with the budget set by the device's
measured costs instead of by hand). Where the path ends at a node without a group, the
next step drafts from the remaining slots of the nearest grouped ancestor (`next_chain_source`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from space.decoding.drafts import Drafts

# The most rows a step may feed (what the price curve is measured up to): a CPU pays for every row past a
# few, a GPU runs a small model's 128 rows for about the price of one.
DEVICE_MAX_ROWS = {"cpu": 48, "cuda": 128}
# Prior acceptance given the parent was accepted, worth PRIOR_WEIGHT observations; measured rates take over.
PRIORS = {"chain": 0.5, "copy": 0.6, "topk": 0.1}
PRIOR_WEIGHT = 4.0
EXPLORE_EVERY = 16  # force the root's group this often, so an unused chain keeps being measured
MATCH_BUCKETS = 6  # copy rates are kept per match length 1..5 and 6 or more


class AcceptanceRates:
    """Per branch key, how often a candidate was accepted when its parent was: `[accepted, offered]`.

    Keys: `("chain", slot)`, `("copy", min(match, MATCH_BUCKETS), depth)`, `("topk", slot, rank)`. One object may be
    carried from prompt to prompt (the `acceptance` option), so an evaluation learns its rates once; `to_json` and
    `from_json` keep it with an evaluation's answers, so a resumed run goes on from the same rates."""

    def __init__(self):
        self.counts: dict[tuple, list[int]] = {}
        self.steps_without_root_group = 0

    def to_json(self) -> dict:
        return dict(counts=[[list(key), list(entry)] for key, entry in self.counts.items()],
                    steps_without_root_group=self.steps_without_root_group)

    @classmethod
    def from_json(cls, data: dict) -> "AcceptanceRates":
        rates = cls()
        rates.counts = {tuple(key): list(entry) for key, entry in data["counts"]}
        rates.steps_without_root_group = data["steps_without_root_group"]
        return rates

    def absorb(self, copies: "list[AcceptanceRates]") -> None:
        """Add what each copy of these rates measured since it was copied (the rows of a batch, each planning from
        its own copy)."""
        start = {key: list(entry) for key, entry in self.counts.items()}
        for rates in copies:
            for key, (accepted, offered) in rates.counts.items():
                before = start.get(key, (0, 0))
                entry = self.counts.setdefault(key, [0, 0])
                entry[0] += accepted - before[0]
                entry[1] += offered - before[1]
        self.steps_without_root_group = min(rates.steps_without_root_group for rates in copies)

    def rate(self, key: tuple) -> float:
        accepted, offered = self.counts.get(key, (0, 0))
        return (accepted + PRIOR_WEIGHT * PRIORS[key[0]]) / (offered + PRIOR_WEIGHT)

    def update(self, key: tuple, accepted: bool) -> None:
        entry = self.counts.setdefault(key, [0, 0])
        entry[0] += int(accepted)
        entry[1] += 1

    def chain_value(self, k: int, first_slot: int = 0) -> float:
        """Expected accepted tokens of a chain drafted from slots `first_slot..k-1`."""
        value, reach = 0.0, 1.0
        for slot in range(first_slot, k):
            reach *= self.rate(("chain", slot))
            value += reach
        return value


@dataclass
class Node:
    token: int
    parent: int
    reach: float  # estimated probability that the path root..node is accepted
    kind: str  # the branch that proposed it first: root, or a draft origin (chain, masks, copy, topk)
    keys: list[tuple] = field(default_factory=list)  # acceptance keys of every branch that proposed it
    q: torch.Tensor | None = None  # the chain token's draft distribution, when sampled


@dataclass
class DraftTree:
    """One step's candidates: `nodes[0]` is the root; `grouped[u]` is True where node u carries a mask group;
    `candidates[u]` lists u's children in test order with their draft distribution (None: deterministic)."""

    nodes: list[Node]
    grouped: list[bool]
    candidates: list[list[tuple[int, torch.Tensor | None]]]
    k: int = 0  # the width of a group

    @property
    def tokens(self) -> list[int]:
        return [node.token for node in self.nodes]

    @property
    def parents(self) -> list[int]:
        return [node.parent for node in self.nodes]

    @property
    def rows(self) -> int:
        """Rows the step feeds: a node each, and k per group."""
        return len(self.nodes) + self.k * sum(self.grouped)

    @property
    def value(self) -> float:
        """Expected tokens: the bonus, and each node's chance of being accepted."""
        return 1.0 + sum(node.reach for node in self.nodes[1:])


@dataclass
class ShapeConfig:
    k: int  # mask group width (0: no groups, copies only)
    price: Callable[[int], float]  # price of a forward of n rows, relative to one row (`row_cost.CostCurve.price`)
    max_rows: int
    copy: bool = True
    topk: bool = True
    faithful: bool = False  # the paper's chain: everything fed, a group on the root and on every chain node


def acceptance_key(drafts: Drafts, i: int) -> tuple:
    """The `AcceptanceRates` key of `drafts.tokens[i]`: its chain slot, its copy depth and match length, or its
    runner-up slot and rank."""
    if drafts.origin == "copy":
        return ("copy", min(drafts.match, MATCH_BUCKETS), i + 1)
    if drafts.origin == "topk":
        return ("topk", drafts.slot, drafts.rank)
    return ("chain", drafts.slot + i)  # the chain, or the mask ids standing in for it


def _trie(root_token: int, chain: Drafts, runners_up: list[Drafts], copies: list[Drafts], rates: AcceptanceRates,
          config: ShapeConfig, merge: bool = True) -> list[Node]:
    """Every candidate node in one trie (parents first): at each chain depth the runners-up beside the chain
    token, then the chain token; then the copies. Proposals of the same token under the same parent merge; with
    `merge=False` none does (a plan that must not look at the tokens)."""
    nodes = [Node(root_token, -1, 1.0, "root")]
    children: dict[tuple, int] = {}

    def add(parent: int, token: int, reach: float, kind: str, key: tuple, q=None) -> int:
        identity = (parent, token) if merge else (len(nodes),)  # a fresh identity never matches
        index = children.get(identity)
        if index is None:
            index = len(nodes)
            children[identity] = index
            nodes.append(Node(token, parent, reach, kind))
        node = nodes[index]
        node.reach = max(node.reach, reach)
        node.keys.append(key)
        if q is not None and node.q is None:
            node.q = q
        return index

    beside = {depth: [drafts for drafts in runners_up if drafts.after == depth] for depth in range(len(chain))}
    parent, reach = 0, 1.0
    chain_nodes = [0]  # chain_nodes[d]: the node after the chain's first d tokens
    for i, token in enumerate(chain.tokens):
        parent_reach = reach
        key = acceptance_key(chain, i)
        reach *= rates.rate(key)
        if config.topk:
            for runner_up in beside[i]:
                runner_key = acceptance_key(runner_up, 0)
                add(parent, runner_up.tokens[0], parent_reach * rates.rate(runner_key), "topk", runner_key)
        parent = add(parent, token, reach, chain.origin, key, None if chain.q is None else chain.q[i])
        chain_nodes.append(parent)
    if config.copy:
        for copy in copies:
            if copy.after >= len(chain_nodes):
                continue
            parent = chain_nodes[copy.after]
            reach = nodes[parent].reach
            for i, token in enumerate(copy.tokens):
                key = acceptance_key(copy, i)
                reach *= rates.rate(key)
                parent = add(parent, token, reach, "copy", key)
    return nodes


def plan_tree(root_token: int, chain: Drafts, runners_up: list[Drafts], copies: list[Drafts],
              rates: AcceptanceRates, config: ShapeConfig, sampled: bool = False,
              max_depth: int | None = None) -> DraftTree:
    """The step's tree: the candidates (and groups) that maximise expected tokens per unit price. `runners_up`
    (origin "topk") stand beside the chain token their `after` names, `copies` (origin "copy") continue the
    context followed by the chain's first `after` tokens.

    `sampled`: the chain's tokens were drawn from their slots' distributions. Multi-candidate sampling is exact
    only if whether a drawn token is fed does not depend on the value drawn, and merges with copies and
    runners-up would make it so. So the chain's depth, its groups and the runners-up per slot are chosen
    first on a trie that merges nothing (from the acceptance keys' rates, the price and the cap alone);
    copies, which are deterministic drafts, then fill what still pays.

    `max_depth`: no row may sit deeper than this below the root (a node at depth d, a group's masks at d+1 .. d+k;
    `space.decoding.common.Model.position_limit`), whatever it would be worth."""
    plan = plan_steps(root_token, chain, runners_up, copies, rates, config, sampled, max_depth)
    return plan_batch([plan], config.price, config.max_rows)[0]


def plan_steps(root_token: int, chain: Drafts, runners_up: list[Drafts], copies: list[Drafts],
               rates: AcceptanceRates, config: ShapeConfig, sampled: bool = False, max_depth: int | None = None):
    """`plan_tree` as steps a batch takes together: yields each `Selection` (the row's candidates in greedy order)
    and is sent back how many of them to feed (`cut`, with every row's selection at once); returns the tree."""
    if config.faithful:  # the paper's chain: everything (that fits), a group on the root and every chain node
        nodes = _trie(root_token, chain, runners_up, copies, rates, config)
        depths = _depths(nodes)
        chosen = [u for u in range(len(nodes)) if _fits(depths[u], 0, max_depth)]
        grouped = {u for u in chosen if config.k and nodes[u].kind in ("root", "chain", "masks")
                   and _fits(depths[u], config.k, max_depth)}
        return _tree(nodes, chosen, grouped, config.k)
    if not sampled:
        nodes = _trie(root_token, chain, runners_up, copies, rates, config)
        selection = _candidates(nodes, rates, config, max_depth=max_depth)
        return _tree(nodes, *selection.taking((yield selection)), config.k)

    skeleton = _trie(root_token, chain, runners_up, [], rates, config, merge=False)
    selection = _candidates(skeleton, rates, config, max_depth=max_depth)
    fixed, fixed_groups = selection.taking((yield selection))
    fed_keys = {skeleton[u].keys[0] for u in fixed[1:]}
    grouped_keys = {skeleton[u].keys[0] if u else "root" for u in fixed_groups}
    nodes = _trie(root_token, chain, runners_up, copies, rates, config)
    forced = [u for u, node in enumerate(nodes) if u == 0 or any(key in fed_keys for key in node.keys)]
    forced_groups = {u for u in forced if (nodes[u].keys[0] if u else "root") in grouped_keys}
    for u, node in enumerate(nodes):
        if u not in forced:
            node.q = None  # a drawn token fed only through a copy it equals is tested as that copy: one-hot
    selection = _candidates(nodes, rates, config, forced, forced_groups,
                            lambda u: any(key[0] == "copy" for key in nodes[u].keys), max_depth)
    return _tree(nodes, *selection.taking((yield selection)), config.k)


def plan_batch(plans: list, price: Callable[[int], float], max_rows: int) -> list[DraftTree]:
    """Run the rows' `plan_steps` together: each round, the selections of the rows still planning are cut at once
    (`cut`), priced with the trees the finished plans feed. So a candidate's price is what it adds to the whole
    batch's forward, and each sequence gets fewer candidates as the batch grows. One plan is `plan_tree`."""
    trees: list[DraftTree | None] = [None] * len(plans)
    fixed_widths, fixed_value = [], 0.0
    answers: dict[int, int | None] = {row: None for row in range(len(plans))}
    while answers:
        pending: dict[int, Selection] = {}
        for row, answer in answers.items():
            try:
                pending[row] = plans[row].send(answer)
            except StopIteration as stop:
                trees[row] = stop.value
                fixed_widths.append(stop.value.rows)
                fixed_value += stop.value.value
        rows = list(pending)
        prefixes = cut([pending[row] for row in rows], price, max_rows, fixed_widths, fixed_value) if rows else []
        answers = dict(zip(rows, prefixes))
    return trees


@dataclass
class Selection:
    """One row's candidates for a step: what it feeds anyway (`forced` nodes, parents first, and their groups:
    `rows` rows worth `value` expected tokens) and the rest in greedy order of value per row, `order[i]` =
    `(kind, node, rows, value)`, kind "node" or "group"."""

    forced: list[int]
    forced_groups: set[int]
    rows: int
    value: float
    order: list[tuple[str, int, int, float]]

    def taking(self, prefix: int) -> tuple[list[int], set[int]]:
        """The nodes and groups fed when the first `prefix` entries of the order are."""
        chosen, grouped = list(self.forced), set(self.forced_groups)
        for kind, u, _, _ in self.order[:prefix]:
            (chosen.append if kind == "node" else grouped.add)(u)
        return chosen, grouped


def cut(selections: list[Selection], price: Callable[[int], float], max_rows: int,
        fixed_widths: list[int] | None = None, fixed_value: float = 0.0) -> list[int]:
    """How much of each selection's order to feed. A batch's forward is as wide as its widest sequence (every row
    is padded to it, `space.decoding.common.batch_inputs`), so a step of B sequences W rows wide costs what B * W
    rows cost, and a sequence's candidates up to W ride in what would be padding. So the cut is a width: for each
    W from the widest forced tree up, every sequence takes the longest prefix of its order that fits in W rows,
    and the W with the most expected tokens per unit price (`price(B * W)`) wins, within `max_rows` rows in all
    (never narrower than a forced tree). `fixed_widths`: the trees already chosen (worth `fixed_value`). With one
    sequence this is the prefix of its order with the most tokens per unit price. The price can jump (a row past a
    kernel's block), so a width may pay only once several rows are in."""
    fixed_widths = fixed_widths or []
    sequences = len(selections) + len(fixed_widths)
    sizes = []  # per selection: rows and value after each prefix of its order
    for selection in selections:
        rows, value, sums = selection.rows, selection.value, [(selection.rows, selection.value)]
        for _, _, extra_rows, extra_value in selection.order:
            rows, value = rows + extra_rows, value + extra_value
            sums.append((rows, value))
        sizes.append(sums)
    narrowest = max([sums[0][0] for sums in sizes] + fixed_widths)
    widest = max(narrowest, max_rows // sequences)
    widths = sorted({rows for sums in sizes for rows, _ in sums if narrowest <= rows <= widest} | {narrowest})
    best, best_rate = None, 0.0
    for width in widths:
        taken = [max(p for p, (rows, _) in enumerate(sums) if rows <= width) for sums in sizes]
        value = fixed_value + sum(sums[p][1] for sums, p in zip(sizes, taken))
        rate = value / price(sequences * width)
        if best is None or rate > best_rate:
            best, best_rate = taken, rate
    return best


def _depths(nodes: list[Node]) -> list[int]:
    depths = [0] * len(nodes)
    for u, node in enumerate(nodes[1:], start=1):  # parents first
        depths[u] = depths[node.parent] + 1
    return depths


def _fits(depth: int, below: int, max_depth: int | None) -> bool:
    """Whether rows `below` levels under a node at `depth` stay within `max_depth` (None: no limit)."""
    return max_depth is None or depth + below <= max_depth


def _candidates(nodes: list[Node], rates: AcceptanceRates, config: ShapeConfig, forced: list[int] | None = None,
                forced_groups: set[int] | None = None, allowed: Callable[[int], bool] = lambda u: True,
                max_depth: int | None = None) -> Selection:
    """What a row could feed: `forced` nodes (parents first) and their groups, then, in greedy order of expected
    tokens per row (a node only after its parent, a group only on a fed node), the `allowed` ones that fit within
    `max_depth` and `config.max_rows`. `cut` decides how much of that order pays."""
    depths = _depths(nodes)
    node_fits = [_fits(depth, 0, max_depth) for depth in depths]
    group_fits = [_fits(depth, config.k, max_depth) for depth in depths]
    children_reach = [0.0] * len(nodes)
    for node in nodes[1:]:
        children_reach[node.parent] = max(children_reach[node.parent], node.reach)
    fresh_chain = rates.chain_value(config.k) if config.k else 0.0

    def group_gain(u: int) -> float:
        # the group pays off when the path ends at u: the next step gets a fresh chain there
        return max(nodes[u].reach - children_reach[u], 0.0) * fresh_chain

    forced = forced or [0]
    forced_groups = set(forced_groups or ())
    if config.k and rates.steps_without_root_group >= EXPLORE_EVERY and group_fits[0]:
        forced_groups.add(0)  # an unused chain is measured again now and then
    selected, grouped = set(forced), set(forced_groups)
    base_rows = rows = len(forced) + config.k * len(forced_groups)
    base_value = sum(nodes[u].reach for u in forced[1:]) + 1.0 + sum(group_gain(u) for u in forced_groups)
    order: list[tuple[str, int, int, float]] = []
    while True:
        best, best_density = None, 0.0
        for u in range(1, len(nodes)):
            if (u not in selected and nodes[u].parent in selected and rows + 1 <= config.max_rows and allowed(u)
                    and node_fits[u] and nodes[u].reach > best_density):
                best, best_density = ("node", u), nodes[u].reach
        if config.k and rows + config.k <= config.max_rows:
            for u in selected - grouped:
                density = group_gain(u) / config.k
                if allowed(u) and group_fits[u] and density > best_density:
                    best, best_density = ("group", u), density
        if best is None:
            return Selection(forced, forced_groups, base_rows, base_value, order)
        kind, u = best
        if kind == "node":
            selected.add(u)
            order.append((kind, u, 1, nodes[u].reach))
            rows += 1
        else:
            grouped.add(u)
            order.append((kind, u, config.k, group_gain(u)))
            rows += config.k


def _tree(nodes: list[Node], chosen: list[int], grouped: set[int], k: int = 0) -> DraftTree:
    """Renumber the chosen nodes (parents first) and list each node's children in test order:
    sampled chain token first, then deterministic ones in the order they were proposed."""
    chosen = sorted(chosen)  # trie indices already put parents first
    renumber = {old: new for new, old in enumerate(chosen)}
    kept = [Node(n.token, renumber.get(n.parent, -1), n.reach, n.kind, n.keys, n.q) for n in (nodes[u] for u in chosen)]
    candidates: list[list] = [[] for _ in kept]
    for index, node in enumerate(kept[1:], start=1):
        candidates[node.parent].append((index, node.q))
    for entries in candidates:
        entries.sort(key=lambda entry: entry[1] is None)  # stable: drawn drafts before deterministic ones
    return DraftTree(kept, [u in grouped for u in chosen], candidates, k)


def record_outcome(tree: DraftTree, path: list[int], rates: AcceptanceRates) -> None:
    """Update the rates with every candidate whose parent was accepted."""
    reached = {0, *path}
    for index, node in enumerate(tree.nodes[1:], start=1):
        if node.parent in reached:
            for key in node.keys:
                rates.update(key, index in reached)
    if tree.grouped[0]:
        rates.steps_without_root_group = 0
    else:
        rates.steps_without_root_group += 1


def next_chain_source(tree: DraftTree, path: list[int]) -> tuple[int, int] | None:
    """Where the next chain comes from: `(grouped node, first slot)`, the last accepted node's group from slot 0,
    else the nearest grouped ancestor's slots past the accepted depth; None when no group is on the path."""
    steps = 0
    for node in reversed([0, *path]):
        if tree.grouped[node]:
            return node, steps
        steps += 1
    return None
