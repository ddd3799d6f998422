"""What every decoding method shares: the options base, results, input checks, the model forward, and
the steps every decoder loop is written with.

A decoder is a function `generate(model, input_ids, options) -> DecodeResult` whose `options` is its own
dataclass, a subclass of `DecodeOptions` (the fields every method reads). It neither tokenizes, prints
nor times; the evaluation harness does that, with one definition for every method.

`DecodeOptions.validate` first checks every option's type against its annotation (`check_option_types`:
a string never passes for a flag, a float never for a count), then the ranges. `fit_context` cuts
`max_new_tokens` to the room the model's context leaves after the prompt, with a `SpaceWarning`.

Every loop is written with the same named steps (Medusa's generate_candidates -> tree_decoding ->
evaluate_posterior -> update_inference_inputs): `Run.start` (the preamble: target model, input on its
device, output buffer, KV cache, the `Sampler` with its generator, stats), `Model.chunk_inputs` (what a
forward is fed: the committed tokens the cache has not seen, then a chunk of drafts, masks or a tree with
its own attention pattern; `Run.forward` for a plain causal chunk), one `Model.hidden` forward,
`space.decoding.verify.accept` (the acceptance rule the sampler selects), `Run.commit` (append, cut at EOS /
the budget, record the stats), then the cache update and the draft.

The model is used through public HF attributes only, so any LLaMA-family `*ForCausalLM` works unchanged:
`get_decoder()` (the backbone, fed a 4D float mask and explicit position ids), `get_output_embeddings()`
(lm_head, applied only to the rows a method reads), `get_input_embeddings()` (device and dtype),
`config` (with `_attn_implementation`), `generation_config` (EOS) and `hf_device_map` (the one-device check).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from space.adapters import addons
from space.cache import CompactCache, cache_kwargs
from space.decoding.observe import Observer, check_observers
from space.decoding.sampling import Sampler
from space.errors import SpaceError, SpaceWarning
from space.models import unwrap
from space.weights import derived
from space.window import AttentionMasks

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class DecodeOptions:
    """The options every method reads; a method's own options subclass this and validate their own fields."""

    max_new_tokens: int = 128
    eos_token_id: int | list[int] | None = None  # None: the model's generation config; []: never stop
    use_cache: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0
    seed: int | None = None
    streamer: object = field(default=None, repr=False, compare=False)  # HF streamer (`space.decoding.observe`)
    on_step: object = field(default=None, repr=False, compare=False)  # callable(Step) after each commit

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def session_options(cls) -> dict:
        """Options whose value is carried from prompt to prompt of one evaluation run (fresh objects, each with a
        `to_json()` and a `from_json(data)`, so a resumed run goes on from the stored state)."""
        return {}

    def validate(self) -> None:
        check_option_types(self)
        check_observers(self.streamer, self.on_step)
        if self.max_new_tokens < 1:
            raise SpaceError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise SpaceError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (torch's generator range; got "
                             f"{self.seed})")
        if self.do_sample:
            if not 0 < self.temperature < math.inf:
                raise SpaceError(f"temperature must be finite and > 0 when sampling (got {self.temperature})")
            if not 0 < self.top_p <= 1:
                raise SpaceError(f"top_p must be in (0, 1] (got {self.top_p})")
            if self.top_k < 0:
                raise SpaceError(f"top_k must be >= 0 (got {self.top_k}); 0 disables it")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_ids(value) -> bool:
    return _is_int(value) or (isinstance(value, (list, tuple)) and all(_is_int(v) for v in value))


# An option's annotation -> (test, what it must be). A string or a float must never pass for an int or a
# flag: `do_sample="false"` would sample (a non-empty string is true), `max_new_tokens=2.5` fails deep in torch.
_OPTION_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "int | list[int]": (_is_ids, "an integer or a list of integers"),
}


def check_option_types(options) -> None:
    """One line for an option of the wrong type, read off the dataclass annotations (`int | None` also
    takes None); fields annotated otherwise (`object`, `tuple`) are checked by their own method."""
    for option in fields(options):
        annotation = option.type.__name__ if isinstance(option.type, type) else str(option.type)
        optional = annotation.endswith(" | None")
        test, what = _OPTION_TYPES.get(annotation.removesuffix(" | None"), (None, None))
        value = getattr(options, option.name)
        if test is None or (optional and value is None) or test(value):
            continue
        raise SpaceError(f"{option.name} must be {what}{' or None' if optional else ''} (got {value!r})")


@dataclass
class DecodeStats:
    """Counts every method reports. `steps` = target forwards; `tokens_per_step[i]` = tokens emitted by forward i."""

    steps: int = 0
    tokens_per_step: list[int] = field(default_factory=list)
    accepted_per_step: list[int] = field(default_factory=list)  # drafts accepted (bonus excluded)

    def record(self, emitted: int, accepted: int = 0) -> None:
        self.steps += 1
        self.tokens_per_step.append(emitted)
        self.accepted_per_step.append(accepted)

    @property
    def mean_tokens_per_step(self) -> float:
        return sum(self.tokens_per_step) / max(self.steps, 1)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self) | {"mean_tokens_per_step": self.mean_tokens_per_step}

    def record_fields(self) -> dict:
        """What an evaluation record keeps of a run: `steps` and every per-step / per-round list, in field order."""
        return {"steps": self.steps} | {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), list)
        }


@dataclass
class DecodeResult:
    """`tokens`: 1-D LongTensor of generated ids only (ends with EOS when one was generated)."""

    tokens: torch.Tensor
    stats: DecodeStats


def check_model(model) -> None:
    """One line unless `model` is (a peft wrapper of) a Hugging Face causal LM, the only thing a decoder drives."""
    inner = unwrap(model)
    if not (isinstance(inner, torch.nn.Module) and hasattr(inner, "config")
            and all(callable(getattr(inner, name, None)) for name in ("get_decoder", "get_output_embeddings"))):
        raise SpaceError(f"model must be a Hugging Face causal LM (a *ForCausalLM, e.g. from space.load_model), "
                         f"not {type(model).__name__}")


def check_prompt(model, input_ids: torch.Tensor) -> None:
    check_model(model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise SpaceError("input_ids must be a [1, n] LongTensor (e.g. tokenizer(text, return_tensors='pt').input_ids)")
    if input_ids.shape[0] != 1:
        raise SpaceError(f"batch size {input_ids.shape[0]} is not supported yet: decode one prompt at a time ([1, n])")
    if input_ids.shape[1] < 1:
        raise SpaceError("the prompt is empty: input_ids needs at least one token")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and input_ids.shape[1] >= context:
        raise SpaceError(
            f"the prompt has {input_ids.shape[1]} tokens but the model's context is {context}; shorten the prompt"
        )
    vocab = model.config.vocab_size
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise SpaceError(f"input_ids contain ids outside the vocabulary [0, {vocab})")
    masks = addons(unwrap(model)).input_only
    if masks is not None and bool(((input_ids >= masks.start) & (input_ids < masks.stop)).any()):
        raise SpaceError(f"the prompt contains a mask id ({masks.start}..{masks.stop - 1}) of this gated model: its "
                         "adapter would act on that row, and the output would no longer be the base model's; remove "
                         "the mask tokens from the prompt")


def fit_context(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeOptions:
    """`options` with `max_new_tokens` cut to the room the model's context leaves after the prompt.

    Positions past `max_position_embeddings` are ones the model was never trained on; every method
    stops at the same length, so AR identity holds. The cut is said once per call (`SpaceWarning`).
    """
    context = getattr(unwrap(model).config, "max_position_embeddings", None)
    room = None if context is None else int(context) - input_ids.shape[1]
    if room is None or options.max_new_tokens <= room:
        return options
    warnings.warn(
        f"max_new_tokens {options.max_new_tokens} cut to {room}: the prompt has {input_ids.shape[1]} tokens and "
        f"the model's context (max_position_embeddings) is {context}; pass max_new_tokens <= {room} to silence this",
        SpaceWarning, stacklevel=3,
    )
    return replace(options, max_new_tokens=room)


def check_one_device(model) -> None:
    """Refuse a model split over several accelerators (`device_map`): the decoders index hidden states,
    logits and the cache as tensors of one device. CPU/disk offload passes (accelerate runs offloaded
    blocks on the one main device), except for the embeddings and lm_head, whose weights the decoders read."""
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = sorted({f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values()} - {"cpu", "disk"})
    if len(devices) > 1:
        raise SpaceError(f"the model is split over devices {devices} (device_map); the decoders need it on one "
                         "device: load it with device_map={'': 'cuda:0'} (or without device_map, then .to(device))")
    ends = (model.get_input_embeddings(), model.get_output_embeddings())
    if any(getattr(getattr(end, "weight", None), "is_meta", False) for end in ends):
        raise SpaceError("the model's input embeddings or lm_head are offloaded (device_map 'cpu'/'disk'); the "
                         "decoders read their weights: keep embed_tokens and lm_head on the main device")


def eos_ids(model, eos_token_id) -> list[int]:
    """The stop ids: explicit ones, else the model's generation config, else its config."""
    if eos_token_id is None:
        generation_config = getattr(model, "generation_config", None)
        eos_token_id = getattr(generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def fp32_head(head: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of a half-precision lm_head (same class, so CPU keeps its fast products), kept on the head
    and retaken when the weight is replaced or changed in place (`space.weights.derived`)."""
    return derived(head.__dict__, "_fp32_copy", (head.weight,), lambda: _float_copy(head), type(head))


def _float_copy(head: torch.nn.Module) -> torch.nn.Module:
    weight = head.weight
    copy = head.__class__.__new__(head.__class__)
    torch.nn.Module.__init__(copy)
    copy.in_features, copy.out_features = weight.shape[1], weight.shape[0]
    copy.weight = torch.nn.Parameter(weight.detach().float(), requires_grad=False)
    bias = getattr(head, "bias", None)
    copy.bias = None if bias is None else torch.nn.Parameter(bias.detach().float(), requires_grad=False)
    return copy


class Model:
    """The three pieces of a causal LM a decoder touches: backbone, lm_head, config."""

    def __init__(self, model):
        model = unwrap(model)
        check_one_device(model)
        attn = getattr(model.config, "_attn_implementation", "eager")
        if attn not in ("eager", "sdpa"):
            raise SpaceError(
                f"attention implementation {attn!r} cannot take a custom 4D mask; load the model with "
                "attn_implementation='sdpa' (or 'eager')"
            )
        self.model = model
        self.config = model.config
        self.backbone = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        carried = addons(model)
        self.input_only = carried.input_only
        self.sampler_head = carried.sampler_head
        if self.sampler_head is not None and self.sampler_head.up.weight.device != self.device:
            self.sampler_head.to(self.device)  # not one of the model's modules: a later model.to() left it behind

    @functools.cached_property
    def rope_thresholds(self) -> tuple[int, ...]:
        """The lengths at which the model's RoPE frequencies change with the longest position in a forward:
        `longrope` switches to its long factors past `original_max_position_embeddings`, `dynamic` rescales past
        `max_position_embeddings` (transformers' `dynamic_rope_update`). Empty for RoPE that does not."""
        parameters = getattr(self.config, "rope_parameters", None) or {}
        per_type = parameters.values() if all(isinstance(v, dict) for v in parameters.values()) and parameters \
            else [parameters]
        thresholds = set()
        for entry in per_type:
            kind = entry.get("rope_type", entry.get("type"))
            if kind == "longrope":
                thresholds.add(int(entry["original_max_position_embeddings"]))
            elif kind is not None and "dynamic" in kind:
                thresholds.add(int(self.config.max_position_embeddings))
        return tuple(sorted(thresholds))

    def position_limit(self, committed: int) -> int | None:
        """The highest position a forward may feed while `committed` tokens are committed (its first new row at
        `committed - 1`), so that its RoPE frequencies are the ones AR uses for every row it computes; None: any.

        Frequencies that depend on the longest position in a forward are picked once for all its rows. AR
        computes the row at position p in a forward whose longest position is p (or, in the prefill, the
        prompt's last), so while `committed` has not passed a threshold T, every row of the forward must sit
        below T; once it has, every row AR computes is past T too."""
        limits = [threshold - 1 for threshold in self.rope_thresholds if committed <= threshold]
        return min(limits) if limits else None

    @functools.cached_property
    def attention(self) -> AttentionMasks:
        """The layers' sliding windows, read when a decoder first builds a mask of its own (AR never does)."""
        return AttentionMasks.for_config(self.config)

    def mask(self, allowed: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor):
        """A decoder's own pattern `[q, kv]` as the backbone's mask, with the model's sliding windows applied."""
        return self.attention.build(allowed, query_positions, key_positions, self.dtype)

    def chunk_inputs(self, prefix: torch.Tensor, seen: int, chunk: torch.Tensor | None = None,
                     allowed: torch.Tensor | None = None, offsets: torch.Tensor | None = None) -> "ForwardInputs":
        """One forward's inputs: the tokens of `prefix` `[P]` the cache does not hold (all but its first `seen`), fed
        causally at their own positions, then `chunk` `[c]`.

        With a pattern, chunk row i sits at position `P + offsets[i]` and sees the whole prefix and the chunk rows
        `allowed[i]` (`[c, c]` bool): the mask is built from it, with the model's sliding windows. Without one the
        chunk simply continues the prefix (consecutive positions, causal) and the model builds its own mask."""
        device = self.device
        base, unseen = prefix.shape[0], prefix.shape[0] - seen
        ids = prefix[seen:] if chunk is None else torch.cat([prefix[seen:], chunk])
        if allowed is None:
            return ForwardInputs(ids, torch.arange(seen, seen + ids.shape[0], device=device), unseen, seen)
        positions = torch.cat([torch.arange(seen, base, device=device), offsets + base])
        rows = ids.shape[0]
        prefix_columns = torch.ones(rows, base, dtype=torch.bool, device=device)
        if unseen:  # the uncached prefix rows see the prefix causally, never the chunk
            prefix_columns[:unseen] = torch.ones(unseen, base, dtype=torch.bool, device=device).tril(diagonal=seen)
        chunk_columns = torch.zeros(rows, chunk.shape[0], dtype=torch.bool, device=device)
        chunk_columns[unseen:] = allowed
        keys = torch.cat([torch.arange(base, device=device), offsets + base])  # a cached x_t sits at position t
        return ForwardInputs(ids, positions, unseen, seen, torch.cat([prefix_columns, chunk_columns], dim=1), keys,
                             self)

    def hidden(self, input_ids, position_ids, attention_mask=None, cache=None) -> torch.Tensor:
        """One backbone forward -> final-norm hidden states `[q, H]` (batch 1 squeezed)."""
        output = self.backbone(
            input_ids=input_ids[None],
            attention_mask=attention_mask,
            position_ids=position_ids[None],
            use_cache=cache is not None,
            **cache_kwargs(self.backbone, cache),
        )
        return output.last_hidden_state[0]

    def feed(self, inputs: "list[ForwardInputs]", cache: CompactCache | None = None) -> list[torch.Tensor]:
        """One backbone forward over a batch of rows' inputs (`inputs[r].seen` of row r's entries in `cache`) ->
        each row's hidden states `[fed_r, H]`. One row is fed as it is; several are padded to the longest, each with
        its own positions and mask, and row r's chunk is written after its own cache entries
        (`CompactCache.set_row_lengths`): no row moves to line up with another."""
        if len(inputs) == 1:
            only = inputs[0]
            return [self.hidden(only.ids, only.positions, only.mask, cache)]
        ids, positions, mask = batch_inputs(inputs, self)
        if cache is not None:
            cache.set_row_lengths([row.seen for row in inputs])
        output = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=cache is not None, **cache_kwargs(self.backbone, cache))
        hidden = output.last_hidden_state
        return [hidden[r, : row.ids.shape[0]] for r, row in enumerate(inputs)]

    def logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """lm_head on the given rows only, computed in fp32 whatever the model's dtype.

        A half-precision product rounds each logit to 8 (bf16) or 11 (fp16) bits, enough to flip an
        argmax between a verify row and an AR row; the few rows a decoder reads are cheap in fp32.
        """
        weight = getattr(self.head, "weight", None)
        if weight is None or weight.dtype == torch.float32:
            logits = self.head(hidden_rows).float()
        else:
            logits = fp32_head(self.head)(hidden_rows.float())
        if self.input_only is not None:  # a gated model's output is the base's: mask ids are inputs only
            logits[..., self.input_only] = torch.finfo(logits.dtype).min  # finite: 0 * log p stays 0
        return logits

    def chain_drafts(self, hidden_rows: torch.Tensor, logits: torch.Tensor, previous_token: int,
                     pick) -> tuple[torch.Tensor, list[int]]:
        """A chain's logits `[m, V]` and tokens from mask slots (`hidden_rows` `[m, H]`, their `logits`), each slot
        refined by the model's sampler head given the token picked before it (the first given `previous_token`, the
        last committed). `pick(logits[V])` chooses. Only for a model with a head."""
        weight = self.head.weight if self.head.weight.dtype == torch.float32 else fp32_head(self.head).weight
        embed = self.model.get_input_embeddings().weight
        return self.sampler_head.refine_chain(hidden_rows, logits, previous_token, embed, weight, pick)


@dataclass
class ForwardInputs:
    """What one row of a backbone forward is fed (`Model.chunk_inputs`); `hidden[unseen:]` are the chunk's rows."""

    ids: torch.Tensor  # [fed]
    positions: torch.Tensor  # [fed]
    unseen: int  # committed rows fed before the chunk (0 when the cache holds the whole prefix)
    seen: int  # cache entries before the fed rows (their keys sit at positions 0..seen-1)
    pattern: torch.Tensor | None = None  # [fed, seen + fed] bool: may attend; None: causal
    key_positions: torch.Tensor | None = None  # [seen + fed]; None: 0..seen+fed-1
    model: "Model | None" = field(default=None, repr=False)  # builds the mask from the pattern

    @functools.cached_property
    def mask(self) -> torch.Tensor | dict | None:
        """The backbone's mask for this row alone; None: the model's own causal one."""
        if self.pattern is None:
            return None
        return self.model.mask(self.pattern, self.positions, self.key_positions)

    def full_pattern(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pattern and key positions, the causal ones spelled out."""
        if self.pattern is not None:
            return self.pattern, self.key_positions
        fed, device = self.ids.shape[0], self.ids.device
        causal = torch.ones(fed, self.seen + fed, dtype=torch.bool, device=device).tril(diagonal=self.seen)
        return causal, torch.arange(self.seen + fed, device=device)


def batch_inputs(inputs: list[ForwardInputs], model: Model) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Rows of different lengths as one forward: ids and positions `[B, F]` (F the longest row), and the mask over
    `[B, F, max(seen) + F]` keys. Row r's keys are its `seen` cache entries, then its own fed rows at columns
    `seen .. seen + F`, where the cache writes them; every other column is hidden from it. A padding row repeats the
    row's first id and sees only itself (its output is never read)."""
    width = max(row.ids.shape[0] for row in inputs)
    keys = max(row.seen for row in inputs) + width
    device = inputs[0].ids.device
    ids = torch.empty(len(inputs), width, dtype=torch.long, device=device)
    positions = torch.zeros(len(inputs), width, dtype=torch.long, device=device)
    allowed = torch.zeros(len(inputs), width, keys, dtype=torch.bool, device=device)
    key_positions = torch.zeros(len(inputs), keys, dtype=torch.long, device=device)
    for r, row in enumerate(inputs):
        fed, seen = row.ids.shape[0], row.seen
        pattern, row_keys = row.full_pattern()
        ids[r, :fed], ids[r, fed:] = row.ids, row.ids[0]
        positions[r, :fed] = row.positions
        allowed[r, :fed, : seen + fed] = pattern
        key_positions[r, : seen + fed] = row_keys
        padding = torch.arange(fed, width, device=device)
        allowed[r, padding, seen + padding] = True
    return ids, positions, model.mask(allowed[:, None], positions[:, None], key_positions[:, None])


class Output:
    """The committed sequence (prompt + generated) and the stopping rules: EOS and `max_new_tokens`."""

    def __init__(self, input_ids: torch.Tensor, max_new_tokens: int, eos: list[int], slack: int = 0):
        prompt = input_ids[0]
        self.prompt_length = prompt.shape[0]
        self.ids = prompt.new_empty(self.prompt_length + max_new_tokens + slack)
        self.ids[: self.prompt_length] = prompt
        self.length = self.prompt_length
        self.max_new_tokens = max_new_tokens
        self.eos = set(eos)
        self.finished = False

    @property
    def generated(self) -> int:
        return self.length - self.prompt_length

    def last(self) -> torch.Tensor:
        return self.ids[self.length - 1 : self.length]

    def committed(self) -> torch.Tensor:
        return self.ids[: self.length]

    def append(self, tokens: list[int]) -> int:
        """Commit `tokens`, cut at the first EOS (kept) and at the budget; returns how many were kept."""
        kept = tokens[: self.max_new_tokens - self.generated]
        for i, token in enumerate(kept):
            if token in self.eos:
                kept = kept[: i + 1]
                self.finished = True
                break
        self.ids[self.length : self.length + len(kept)] = torch.tensor(kept, dtype=self.ids.dtype)
        self.length += len(kept)
        if self.generated >= self.max_new_tokens:
            self.finished = True
        return len(kept)

    def result(self, stats: DecodeStats) -> DecodeResult:
        return DecodeResult(tokens=self.ids[self.prompt_length : self.length].clone(), stats=stats)


@dataclass
class Run:
    """One decoding call's state, and the steps every decoder loop shares."""

    target: Model
    out: Output
    cache: CompactCache | None
    sampler: Sampler
    stats: DecodeStats
    observer: Observer | None = None  # the streamer and on_step callback, if the call has them

    @classmethod
    def start(cls, target: Model, input_ids: torch.Tensor, options: DecodeOptions, stats: DecodeStats,
              cache_slack: int = 0, own_cache: bool = True) -> "Run":
        """The preamble: the prompt on the model's device, the output buffer, a cache with room for the
        output plus `cache_slack` uncommitted rows (drafts, masks), the sampler (with a seeded generator when
        sampling). `own_cache=False`: a row of a batch, whose cache the batch holds (`space.decoding.batch`)."""
        out = Output(input_ids.to(target.device), options.max_new_tokens, eos_ids(target.model, options.eos_token_id))
        cache = (CompactCache.for_model(target.model, out.ids.numel() + cache_slack)
                 if options.use_cache and own_cache else None)
        generator = make_generator(options.seed, target.device) if options.do_sample else None
        observer = Observer.of(options)
        if observer is not None:
            observer.start(input_ids)
        return cls(target, out, cache, Sampler.of(options, generator), stats, observer)

    @property
    def finished(self) -> bool:
        return self.out.finished

    @property
    def seen(self) -> int:
        """How many committed tokens the cache holds (0 without a cache: every forward starts over)."""
        return self.cache.length if self.cache is not None else 0

    def forward(self, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden states `[fed, H]` of a forward over the input the cache has not seen: the committed tokens after
        `seen`, then `extra` (drafts, adaptive tokens) right after them, causally."""
        return self.target.feed([self.inputs(self.seen, extra)], self.cache)[0]

    def inputs(self, seen: int, extra: torch.Tensor | None = None) -> ForwardInputs:
        """What `forward` feeds when the cache holds `seen` committed tokens."""
        return self.target.chunk_inputs(self.out.committed(), seen, extra)

    def commit(self, tokens: list[int], accepted: int = 0) -> int:
        """Append `tokens` (cut at EOS and at `max_new_tokens`) and record the forward that produced them:
        `accepted` of them were drafts. Returns how many were kept."""
        emitted = self.out.append(tokens)
        self.stats.record(emitted, min(accepted, emitted))
        if self.observer is not None:
            self.observer.step(tokens[:emitted])
            if self.out.finished:
                self.observer.end()
        return emitted

    def result(self) -> DecodeResult:
        if self.observer is not None:
            self.observer.end()  # a loop that stops without a finishing commit (e.g. the context is full)
        return self.out.result(self.stats)
