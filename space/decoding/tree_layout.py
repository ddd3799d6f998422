"""The per-step input layout of SPACE with a candidate tree, as a pure function of the tree's shape.

A step feeds a tree of candidate tokens rooted at the last committed token `x_{n-1}`: SPACE's chain,
sibling alternatives and a copy from the context share one prefix trie (`space.decoding.tree`). Any
node may carry a private group of `k` masks, which drafts the next step's chain when the accepted path
ends at that node. Rows are laid out node by node, each node followed by its group:

    root, [root's group], node 1, [node 1's group], node 2, ...      (parents before children)

| row                   | position (offset from n-1)   | sees                                             |
|-----------------------|------------------------------|--------------------------------------------------|
| node u at depth d     | d                            | the committed prefix, the path root..u           |
| mask j of u's group   | d + 1 + j                    | the committed prefix, the path root..u, masks 0..j |

So every node sees exactly its AR context (its logits verify its children), and a group sees the prefix
plus the path to its node, then masks at consecutive positions, as in training. For a chain whose every
node carries a group (the paper's chain) the layout is the §3.2 table's row for row (tested against
`tests/paper_chain.py`'s `ChunkLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TreeLayout:
    """The fed chunk's pattern for one tree. Row 0 is the root (the last committed token)."""

    allowed: torch.Tensor  # [q, q] bool: query row may attend to key row
    position_offsets: torch.Tensor  # [q] long; absolute position = n - 1 + offset
    node_rows: torch.Tensor  # [m] row of each node (node 0 = root = row 0)
    group_rows: dict[int, torch.Tensor]  # node -> rows of its k masks, for grouped nodes only
    depths: list[int]  # [m] depth of each node (root 0)

    @property
    def size(self) -> int:
        return self.allowed.shape[0]


def tree_layout(parents: list[int], grouped: list[bool], k: int) -> TreeLayout:
    """Layout of a tree given each node's parent (`parents[0] == -1`, parents before children) and whether
    it carries a group of `k` masks."""
    if not parents or parents[0] != -1:
        raise ValueError("node 0 is the root: parents[0] must be -1")
    if any(not 0 <= parent < node for node, parent in enumerate(parents) if node):
        raise ValueError("every node's parent must come before it")
    if len(grouped) != len(parents):
        raise ValueError("grouped needs one flag per node")
    node_rows, depths, group_starts = [], [], {}
    row = 0
    for node, parent in enumerate(parents):
        node_rows.append(row)
        depths.append(0 if parent < 0 else depths[parent] + 1)
        row += 1
        if grouped[node] and k > 0:
            group_starts[node] = row
            row += k
    size = row
    allowed = torch.zeros(size, size, dtype=torch.bool)
    offsets = torch.zeros(size, dtype=torch.long)
    path_rows: list[list[int]] = []  # rows of root..node, per node
    for node, parent in enumerate(parents):
        path = (path_rows[parent] if parent >= 0 else []) + [node_rows[node]]
        path_rows.append(path)
        allowed[node_rows[node], path] = True
        offsets[node_rows[node]] = depths[node]
        if node in group_starts:
            start = group_starts[node]
            for j in range(k):
                allowed[start + j, path] = True
                allowed[start + j, start : start + j + 1] = True
                offsets[start + j] = depths[node] + 1 + j
    return TreeLayout(
        allowed=allowed,
        position_offsets=offsets,
        node_rows=torch.tensor(node_rows, dtype=torch.long),
        group_rows={node: torch.arange(start, start + k) for node, start in group_starts.items()},
        depths=depths,
    )
