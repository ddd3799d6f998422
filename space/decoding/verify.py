"""Acceptance rules shared by every speculative method.

* `greedy_accept`: the longest prefix of the drafts that equals the target's argmax, plus the
  target's argmax at the first mismatch (the bonus / correction token). Lossless for greedy.
* `speculative_accept`: speculative sampling (Leviathan et al. 2023; Chen et al. 2023). Draft
  `x_i ~ q_i` is kept with probability `min(1, p_i(x_i) / q_i(x_i))`; at the first rejection the
  replacement is drawn from `norm(max(0, p_i - q_i))`; after all k, the bonus from `p_k`. The output
  is distributed exactly as sampling from `p`.
* `original_accept`: SPACE's published rule (docs/spec/SPACE.md §3.4): keep `x_i` when `u <= p_i(x_i) / q_i(x_i)`,
  but draw the replacement from `p_a` itself, not from the residual. Biased; kept for comparison.

Shapes: `p` is `[k+1, V]` (target distributions at the k draft positions and one past them), `q`
is `[k, V]`, `drafts` is `[k]`. Each function returns `(accepted, next_token)`.

`accept` is the dispatch every decoder calls: greedy when its `Sampler` is, else the rule `sampling_mode`
names ("exact": speculative sampling, "original": SPACE's published rule).

Trees (`accept_tree`): greedy follows, from the root, the child whose token is the target's argmax, so it
takes the longest path that AR would write. Sampling is multi-candidate speculative sampling (recursive
rejection over the siblings, SpecInfer, Miao et al. 2024): a child drawn from `q` is kept with probability
`min(1, p(x)/q(x))`, else `p <- norm(max(0, p - q))` and the next sibling is tried; a deterministic child
(a copy, a top-k alternative: a one-hot `q`) is kept with probability `p(x)`, else `p(x) <- 0` and `p` is
renormalised. When every sibling is refused the token is drawn from what is left of `p`. Each test is
exact against the current residual, so the output is distributed as sampling from the target.
"""

from __future__ import annotations

import torch

from space.decoding.sampling import Sampler, sample
from space.errors import SpaceError

SAMPLING_MODES = ("exact", "original")


def check_sampling_mode(mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise SpaceError(f"unknown sampling_mode {mode!r}; use one of {list(SAMPLING_MODES)}")


def accept(verify_logits: torch.Tensor, drafts: torch.Tensor, sampler: Sampler, q: torch.Tensor | None = None,
           draft_probs: torch.Tensor | None = None, sampling_mode: str = "exact") -> tuple[int, int]:
    """Verify `drafts` `[k]` against the target's logits `[k+1, V]` with the rule `sampler` and `sampling_mode` select.

    `q` `[k, V]` (the draft distributions, None when nothing was drafted) serves the exact rule, `draft_probs` `[k]`
    (q_i(x_i)) the original one.
    """
    if not sampler.do_sample:
        return greedy_accept(verify_logits.argmax(dim=-1), drafts)
    p = sampler.probabilities(verify_logits)  # [k+1, V]
    if sampling_mode == "original":
        return original_accept(p, draft_probs, drafts, sampler.generator)
    if q is None:  # no drafts: the bonus alone, from p
        q = p.new_zeros(0, p.shape[-1])
    return speculative_accept(p, q, drafts, sampler.generator)


def greedy_accept(target_tokens: torch.Tensor, drafts: torch.Tensor) -> tuple[int, int]:
    """`target_tokens` `[k+1]` = argmax of the target at each position; `drafts` `[k]`."""
    matches = (target_tokens[:-1] == drafts).int()  # [k]
    accepted = int(matches.cumprod(dim=0).sum())
    return accepted, int(target_tokens[accepted])


def speculative_accept(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    k = drafts.shape[0]
    rows = torch.arange(k, device=drafts.device)
    ratio = p[rows, drafts] / q[rows, drafts]  # [k]; q(x_i) > 0 because x_i was drawn from q_i
    u = torch.rand(k, generator=generator, device=p.device)
    keep = (u < ratio).int()
    accepted = int(keep.cumprod(dim=0).sum())
    if accepted == k:
        return k, int(sample(p[k], generator))
    residual = (p[accepted] - q[accepted]).clamp_min(0)
    total = residual.sum()
    # p == q (to rounding) leaves nothing to correct; p itself is then the right distribution.
    replacement = residual / total if total > 0 else p[accepted]
    return accepted, int(sample(replacement, generator))


def original_accept(
    p: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    """`draft_probs` `[k]` = q_i(x_i), the draft's probability of each drafted token."""
    k = drafts.shape[0]
    rows = torch.arange(k, device=drafts.device)
    ratio = p[rows, drafts] / draft_probs  # [k]
    u = torch.rand(k, generator=generator, device=p.device)
    keep = (u <= ratio).int()
    accepted = int(keep.cumprod(dim=0).sum())
    return accepted, int(sample(p[accepted], generator))


def accept_tree(node_logits: torch.Tensor, tokens: list[int], candidates: list[list[tuple[int, torch.Tensor | None]]],
                sampler: Sampler) -> tuple[list[int], int]:
    """Walk a candidate tree: `node_logits` `[m, V]` are the target's logits at each node (they predict the
    node's children), `tokens[c]` is node c's token, `candidates[u]` lists node u's children in the order
    they are tested, each with the distribution it was drawn from (None: chosen deterministically). A child
    may be listed twice (two branches proposed the same token). Returns the accepted path (nodes after the
    root) and the next token."""
    path, node = [], 0
    if not sampler.do_sample:
        targets = node_logits.argmax(dim=-1).tolist()
        while True:
            child = next((c for c, _ in candidates[node] if tokens[c] == targets[node]), None)
            if child is None:
                return path, targets[node]
            path.append(child)
            node = child
    while True:
        p = sampler.probabilities(node_logits[node : node + 1])[0]
        child = _recursive_rejection(p, tokens, candidates[node], sampler.generator)
        if isinstance(child, torch.Tensor):  # every child refused: a token drawn from the residual
            return path, int(child)
        path.append(child)
        node = child


def _recursive_rejection(p: torch.Tensor, tokens: list[int], children, generator):
    """The accepted child's node index, or (every child refused) a 0-d tensor holding the token drawn from the
    residual."""
    for child, q in children:
        x = tokens[child]
        u = float(torch.rand((), generator=generator, device=p.device))
        if q is None:
            if u < float(p[x]):
                return child
            residual = p.clone()
            residual[x] = 0
        else:
            if u < float(p[x] / q[x]):
                return child
            residual = (p - q).clamp_min(0)
        total = residual.sum()
        if not total > 0:  # p == q to rounding: nothing to correct, p itself is the right distribution
            break
        p = residual / total
    return sample(p, generator)
