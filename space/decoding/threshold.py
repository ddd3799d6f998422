"""Adaptive draft exiting (docs/spec/SELF_SPECULATIVE.md §6): the confidence threshold γ and its update rule.

Drafting stops after the first draft token whose top-1 probability is below γ. After each round,
with `a` of `n` drafts accepted, γ moves toward a target acceptance rate α:

    ar ← β1·ar + (1−β1)·a/n
    γ̃  = γ + ε  if ar < α          (too many rejections: be stricter, draft less)
       = γ      elif n == K_max     (hit the length cap: do not loosen further)
       = γ − ε  otherwise           (acceptance good: draft more)
    γ  ← β2·γ + (1−β2)·γ̃, clamped to [0, 1)

Pure and independent of the decoder, so it is unit-tested on scripted (a, n) sequences and can
drive other methods' draft length later.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass

from space.errors import SpaceError

GAMMA_MAX = 1.0 - 1e-6  # γ = 1 would stop after every token whatever the confidence; keep it below


@dataclass(frozen=True)
class AutoParameters:
    """`auto_parameters` [f, β1, α, ε, β2]; the defaults are the reference's."""

    every: int = 1  # f: update every f verification rounds
    beta1: float = 0.5  # EMA factor of the acceptance rate
    alpha: float = 0.9  # target acceptance rate
    epsilon: float = 0.01  # threshold step
    beta2: float = 0.9  # EMA (momentum) factor of the threshold

    @classmethod
    def from_list(cls, values) -> "AutoParameters":
        values = tuple(values)
        if len(values) != 5:
            raise SpaceError(f"auto_parameters must be 5 numbers [f, beta1, alpha, epsilon, beta2], got {list(values)}")
        every, beta1, alpha, epsilon, beta2 = values
        if int(every) != every or every < 1:
            raise SpaceError(f"auto_parameters f (update every f rounds) must be an integer >= 1, got {every}")
        for name, value in (("beta1", beta1), ("alpha", alpha), ("beta2", beta2)):
            if not 0 <= value <= 1:
                raise SpaceError(f"auto_parameters {name} must be in [0, 1], got {value}")
        if epsilon < 0:
            raise SpaceError(f"auto_parameters epsilon must be >= 0, got {epsilon}")
        return cls(int(every), float(beta1), float(alpha), float(epsilon), float(beta2))


DEFAULT_AUTO_PARAMETERS = astuple(AutoParameters())  # (1, 0.5, 0.9, 0.01, 0.9)


@dataclass
class ThresholdState:
    """γ and the counters it needs. Pass one object to successive `self_spec` calls to carry γ over.

    `gamma=None` takes the call's `draft_threshold`. As in the reference, `ar` and `rounds` restart
    at every call (`start_call`) while γ carries over (the paper's evaluation carries γ across samples).
    `drafted` / `accepted` accumulate over every call: the acceptance rate of a whole run.
    """

    gamma: float | None = None
    ar: float = 0.0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    def start_call(self, initial_gamma: float) -> None:
        if self.gamma is None:
            self.gamma = clamp(initial_gamma)
        self.ar, self.rounds = 0.0, 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ThresholdState":
        return cls(**data)


def clamp(gamma: float) -> float:
    return min(max(gamma, 0.0), GAMMA_MAX)


def update_threshold(state: ThresholdState, accepted: int, drafted: int, max_draft: int,
                     params: AutoParameters, adaptive: bool = True) -> None:
    """Record a round (`accepted` of `drafted`) and, if `adaptive`, move γ (docs/spec/SELF_SPECULATIVE.md §6)."""
    if drafted < 1:
        return  # a round without drafts (prefill, last token of the budget) says nothing about γ
    state.rounds += 1
    state.drafted += drafted
    state.accepted += accepted
    if not adaptive or state.rounds % params.every:
        return
    state.ar = params.beta1 * state.ar + (1 - params.beta1) * accepted / drafted
    if state.ar < params.alpha:
        target = state.gamma + params.epsilon
    elif drafted == max_draft:
        target = state.gamma
    else:
        target = state.gamma - params.epsilon
    state.gamma = clamp(params.beta2 * state.gamma + (1 - params.beta2) * target)
