"""The sampler head: each drafted token conditioned on the token before it (the sampler of arXiv 2507.11851).

A group of k masks drafts `x_{p+1} .. x_{p+k}` in one forward, every mask from the same prefix. Mask j does not
know the token drafted at slot j-1, and mask 1 does not even know `x_p`: the masks stand in for the token the
step's verification commits last (the bonus), which is computed in the same forward. Where the continuation
forks ("return x" or "return None"), each slot's distribution mixes the branches and the argmax of slot j may
follow a different branch than slot j-1's.

The head mends that after the forward, for the few rows a decoder drafts from: a two-layer MLP on the mask's
final hidden state and the input embedding of the previous token (the last committed token for the first slot,
the slot before's draft after it) adds a correction to the hidden state before lm_head:

    h'_j = h_j + W_down silu(W_up [h_j ; embed(y_{j-1})])        (W_down starts at zero: the head starts as a no-op)

Drafting is then sequential over the slots, so lm_head is applied only to a short list per slot: the
`candidates` best tokens of the slot's plain mask logits (which the decoder computes anyway). Outside that list a
refined slot has no probability. Drafts only propose tokens, so every decoder stays exact with or without it.

Trained by `space.adapters.sampler_head_training` (rows from `space.training.sampler_head`) on the frozen model's
mask hidden states (teacher forcing: slot j sees the true `x_{p+j-1}`, which is what it sees at decoding whenever
the slots before it were accepted).
Saved as `HEAD_WEIGHTS` beside a model's `space.json` (field `sampler_head`), loaded by `space.load_model`.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from space.errors import SpaceError

HEAD_WEIGHTS = "sampler_head.safetensors"
HEAD_FIELD = "sampler_head"  # space.json's field holding `SamplerHeadConfig`


@dataclass(frozen=True)
class SamplerHeadConfig:
    """What `space.json` records of a sampler head."""

    inner: int = 576  # width of the MLP's hidden layer
    candidates: int = 32  # tokens per slot the head ranks (the best of the slot's plain mask logits)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, fields: dict, source: str = "space.json") -> "SamplerHeadConfig":
        unknown = sorted(set(fields) - {"inner", "candidates"})
        if unknown:
            raise SpaceError(f"{source}: {HEAD_FIELD} has unknown settings {unknown}; it takes inner and candidates")
        config = cls(**fields)
        for name in ("inner", "candidates"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpaceError(f"{source}: {HEAD_FIELD}.{name} must be a positive integer (got {value!r})")
        return config


class SamplerHead(nn.Module):
    """`h + W_down silu(W_up [h ; e])` on final hidden states `h` and previous-token embeddings `e`."""

    def __init__(self, hidden_size: int, config: SamplerHeadConfig = SamplerHeadConfig()):
        super().__init__()
        self.config = config
        self.up = nn.Linear(2 * hidden_size, config.inner)
        self.down = nn.Linear(config.inner, hidden_size)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor, previous_embeds: torch.Tensor) -> torch.Tensor:
        features = torch.cat([hidden, previous_embeds.to(hidden.dtype)], dim=-1)
        return hidden + self.down(F.silu(self.up(features)))

    def refine_chain(self, hidden_rows: torch.Tensor, logits: torch.Tensor, previous_token: int,
                     embed_weight: torch.Tensor, head_weight: torch.Tensor,
                     pick: Callable[[torch.Tensor], int]) -> tuple[torch.Tensor, list[int]]:
        """Slot by slot, the head's logits `[m, V]` over each slot's `candidates` best plain tokens (the rest at the
        dtype's minimum) and the token `pick` chose from them, each slot conditioned on the token chosen for the slot
        before (the first slot on `previous_token`). `hidden_rows` `[m, H]` and `logits` `[m, V]` are the slots' mask
        rows; `embed_weight` is the input embedding table (read directly: the embedding's hooks belong to the model's
        forward)."""
        refined = torch.full_like(logits, torch.finfo(logits.dtype).min)
        width = min(self.config.candidates, logits.shape[-1])
        candidates = logits.topk(width, dim=-1).indices  # [m, width]
        dtype = self.up.weight.dtype
        tokens = [previous_token]
        for slot in range(logits.shape[0]):
            token = torch.tensor(tokens[-1:], device=logits.device)
            corrected = self(hidden_rows[slot].to(dtype), F.embedding(token, embed_weight)[0])
            ids = candidates[slot]
            refined[slot, ids] = head_weight[ids].float() @ corrected.float()
            tokens.append(pick(refined[slot]))
        return refined, tokens[1:]


# model -> its head, kept outside the model: its modules, state dict and `save_pretrained` stay the base's
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, SamplerHead]" = weakref.WeakKeyDictionary()


def attach(model: nn.Module, head: SamplerHead) -> None:
    """Give `model` its head (found again with `attached`, or `space.adapters.addons`). A copy of the model
    (`copy.deepcopy`, pickling) does not carry it: attach it to the copy too."""
    _ATTACHED[model] = head


def attached(model: nn.Module) -> SamplerHead | None:
    return _ATTACHED.get(model)


def save_head(head: SamplerHead, directory: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write `HEAD_WEIGHTS` (the config goes in `space.json`, written by the caller); a kill mid-save leaves the old
    file or none."""
    from safetensors.torch import save_file

    path = Path(directory) / HEAD_WEIGHTS
    partial = path.with_name(path.name + ".partial")
    save_file({name: tensor.detach().to(dtype).contiguous() for name, tensor in head.state_dict().items()},
              str(partial))
    partial.replace(path)


def load_head(directory: Path, fields: dict, hidden_size: int, device, dtype: torch.dtype) -> SamplerHead:
    """The head a model directory's `space.json` names (`fields`: its `sampler_head` entry; the directory was checked
    by `space.models.check_adapter_dir`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / HEAD_WEIGHTS
    head = SamplerHead(hidden_size, SamplerHeadConfig.from_json(fields, str(Path(directory) / "space.json")))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise SpaceError(f"{path} cannot be read ({error}); re-export it") from None
    try:
        head.load_state_dict(tensors)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise SpaceError(f"{path} does not fit this model ({first})") from None
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)
