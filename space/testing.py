"""Tiny models for tests and CI: random LLaMA-family models and oracle/junk drafters, built in-process.

* `tiny_llama`: a seeded random `LlamaForCausalLM` (GQA or MHA) with mask fields in its config
  (and SDSAT's `sat_id` / `sat_num` when `sat_num` is given: the last id, shared with the masks);
  `architecture="mistral"` or `"qwen2"` builds the same model in those classes (Qwen2: q/k/v biases),
  with `sliding_window` set where given.
  The weights are scaled up so that top-2 logit gaps are large compared with fp32 rounding: greedy
  identity tests then test logic, not luck.
* `tiny_sft_base`, `tiny_sft_data`, `tiny_sft_flags`: a saved tiny base without mask tokens, a small SFT file
  and the `train_sft.py` flags of a short CPU run on them (the training tests' common ground).
* `tiny_tokenizer`: a word-level fast tokenizer over `tok0 .. tokN`, for the mask-token tools.
* `DraftOracle`: wraps a tiny model; rows whose input is a mask id (or the SDSAT adaptive id)
  output a one-hot prediction of a reference continuation (`mode="oracle"`: always right, so SPACE
  accepts all k and SDSAT all k drafts; `mode="junk"`: always wrong). Both methods place a
  placeholder at position p to stand for x_p and predict x_{p+1}, so one rule serves both. Every
  other row is the wrapped model itself, with mask ids never predicted, so the AR output of the
  wrapper is well defined and is the reference the oracle copies.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from torch import nn

from space.cache import cache_kwargs


def tiny_device() -> str:
    """Where `tiny_llama` puts its models: `$SPACE_TEST_DEVICE` (scripts/gpu_check.sh runs the batch and identity
    tests with `cuda`), else the CPU."""
    return os.environ.get("SPACE_TEST_DEVICE", "cpu")


def tiny_llama(
    seed: int = 0,
    vocab_size: int = 96,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    mask_num: int = 3,
    mask_diff: bool = False,
    tie_word_embeddings: bool = False,
    init_std: float = 0.25,
    max_position_embeddings: int = 2048,
    eos_token_id: int = 2,
    sat_num: int | None = None,
    architecture: str = "llama",
    sliding_window: int | None = None,
    max_window_layers: int = 0,
    rope_parameters: dict | None = None,
):
    """A random LLaMA (or Mistral, Qwen2) whose last ids are mask tokens recorded in its config (fp32, CPU, eval mode).

    `sliding_window`: Mistral's window; Qwen2's on every layer (`use_sliding_window`); None: full attention.
    `max_window_layers` (Qwen2): the first that many layers keep full attention (mixed full and sliding layers).
    `rope_parameters`: the RoPE scaling (`{"rope_type": "longrope", ...}`); None: plain RoPE.
    """
    import transformers
    from transformers import GenerationConfig

    from space.tokens import MaskSpec, SatSpec, record_mask_spec, record_sat_spec

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
               "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
    if architecture not in classes:
        raise ValueError(f"architecture must be one of {sorted(classes)}, not {architecture!r}")
    config_class, model_class = (getattr(transformers, name) for name in classes[architecture])
    window = {}
    if architecture == "mistral":
        window = dict(sliding_window=sliding_window)
    elif architecture == "qwen2":
        window = dict(use_sliding_window=sliding_window is not None, sliding_window=sliding_window,
                      max_window_layers=max_window_layers)
    elif sliding_window is not None:
        raise ValueError("LLaMA has no sliding window; use architecture='mistral' or 'qwen2'")
    config = config_class(
        **window,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=eos_token_id,
        pad_token_id=0,
        **({} if rope_parameters is None else dict(rope_parameters=dict(rope_parameters))),
    )
    torch.manual_seed(seed)
    model = model_class(config).float().eval().to(tiny_device())  # initialised on the CPU: the same weights anywhere
    num_ids = mask_num + 1 if mask_diff else 1
    record_mask_spec(model.config, MaskSpec(vocab_size - num_ids, mask_num, mask_diff))
    if sat_num is not None:
        record_sat_spec(model.config, SatSpec(vocab_size - 1, sat_num))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=0)
    return model


def tiny_tokenizer(vocab_size: int = 96):
    """A word-level tokenizer: "tok5 tok7" -> [5, 7]; ids 0..3 are <unk>, <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"tok{i}": i for i in range(len(specials), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


class DraftOracle(nn.Module):
    """A wrapped model whose mask rows predict `reference[position + 1]` (oracle) or never do (junk)."""

    def __init__(self, inner, mode: str = "oracle"):
        super().__init__()
        if mode not in ("oracle", "junk"):
            raise ValueError(f"mode must be 'oracle' or 'junk', not {mode!r}")
        self.inner = inner
        self.mode = mode
        self.config = inner.config
        self.generation_config = inner.generation_config
        spec_ids = set(range(inner.config.mask_id, inner.config.vocab_size))
        if getattr(inner.config, "sat_id", None) is not None:
            spec_ids.add(int(inner.config.sat_id))
        self.mask_ids = torch.tensor(sorted(spec_ids))
        self.reference = torch.zeros(0, dtype=torch.long)
        self.references = [self.reference]
        self._backbone = _OracleBackbone(self)
        self._head = _OracleHead(self)

    def set_reference(self, sequence: torch.Tensor) -> None:
        """The full sequence (prompt + AR continuation) the drafts copy."""
        self.reference = sequence.detach().flatten().cpu()
        self.references = [self.reference]

    def set_references(self, sequences: list[torch.Tensor]) -> None:
        """One reference per prompt of a batch: each row of a forward drafts from the reference its committed rows
        fit best (rows leave a batch as they finish, so a row's index alone does not say whose it is)."""
        self.references = [sequence.detach().flatten().cpu() for sequence in sequences]
        self.reference = self.references[0]

    def _row_reference(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The reference whose tokens agree with most of a row's fed non-mask ids at their positions."""
        if len(self.references) == 1:
            return self.references[0]
        plain = ~torch.isin(input_ids, self.mask_ids)
        ids, at = input_ids[plain], positions[plain]
        scores = [int((reference[at.clamp(max=reference.numel() - 1)] == ids).sum()) for reference in self.references]
        return self.references[scores.index(max(scores))]

    def get_decoder(self):
        return self._backbone

    def get_output_embeddings(self):
        return self._head

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def draft_token(self, positions: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The token a mask at `positions` `[B, q]` predicts (for position p+1); `input_ids` pick each row's
        reference when there are several."""
        if len(self.references) > 1 and input_ids is not None:
            return torch.stack([self._draft_from(self._row_reference(row_ids, row_positions), row_positions)
                                for row_ids, row_positions in zip(input_ids.cpu(), positions)])
        return self._draft_from(self.reference, positions)

    def _draft_from(self, reference: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        lookup = torch.cat([reference, reference.new_zeros(1)])  # 0 past the reference's end
        right = lookup[(positions + 1).clamp(max=reference.numel())]
        if self.mode == "oracle":
            return right
        junk = (right + 1) % self.config.mask_id  # never the right token, never a mask id
        return torch.where(junk == right, (right + 2) % self.config.mask_id, junk)


class _OracleBackbone(nn.Module):
    """Runs the real backbone, then appends two columns: is-mask flag and the drafted token."""

    def __init__(self, oracle: DraftOracle):
        super().__init__()
        self.__dict__["oracle"] = oracle  # not a submodule: avoids a reference cycle in module trees

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        oracle = self.oracle
        backbone = oracle.inner.get_decoder()
        output = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache_kwargs(backbone, cache),
        )
        hidden = output.last_hidden_state  # [B, q, H]
        is_mask = torch.isin(input_ids, oracle.mask_ids.to(input_ids.device))  # [B, q]
        drafted = oracle.draft_token(position_ids.cpu(), input_ids).to(hidden.device)  # [B, q]
        extra = torch.stack([is_mask.to(hidden.dtype), drafted.to(hidden.dtype)], dim=-1)  # [B, q, 2]
        return SimpleNamespace(last_hidden_state=torch.cat([hidden, extra], dim=-1))


class _OracleHead(nn.Module):
    def __init__(self, oracle: DraftOracle):
        super().__init__()
        self.__dict__["oracle"] = oracle

    def forward(self, hidden):  # [..., H + 2]
        oracle = self.oracle
        logits = oracle.inner.get_output_embeddings()(hidden[..., :-2]).float()  # [..., V]
        logits[..., oracle.mask_ids.to(logits.device)] = float("-inf")  # the target never predicts a mask
        is_mask = hidden[..., -2] > 0.5
        one_hot = torch.full_like(logits, -1e4)
        one_hot.scatter_(-1, hidden[..., -1:].long(), 1e4)
        return torch.where(is_mask[..., None], one_hot, logits)


def tiny_text_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in-process on a few sentences: encodes any text, has a chat template.

    Ids 0..3 are <unk>, <s>, </s>, <pad>; `len(tokenizer) <= vocab_size`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [
        "Human: Write a function that adds two numbers.\nAssistant: def add(a, b):\n    return a + b",
        "USER: What is the capital of France? ASSISTANT: The capital of France is Paris.",
        "A chat between a curious user and an artificial intelligence assistant.",
    ] * 20
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = (
        "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    return tokenizer


# --- distribution tests -----------------------------------------------------------------------


def exact_joint(model, prompt: torch.Tensor, length: int, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> dict[tuple, float]:
    """P(x_1..x_length) of sampling from `model` after `prompt` `[1, n]`, by enumerating every prefix."""
    from space.decoding.sampling import probabilities

    dist = {(): 1.0}
    for _ in range(length):
        grown = {}
        for prefix, mass in dist.items():
            ids = torch.cat([prompt[0], torch.tensor(prefix, dtype=torch.long)])[None]
            with torch.no_grad():
                probs = probabilities(model(ids).logits[0, -1], temperature, top_k, top_p)
            for token in probs.nonzero().flatten().tolist():
                grown[prefix + (token,)] = mass * float(probs[token])
        dist = grown
    return dist


def chi_square_p_value(truth: dict, counts: dict, draws: int) -> float:
    """Pearson's test of sampled `counts` against `truth`; cells expecting fewer than 5 draws are pooled."""
    statistic, dof, pooled_expected, pooled_observed = 0.0, -1, 0.0, 0
    for cell, probability in truth.items():
        expected, observed = probability * draws, counts.get(cell, 0)
        if expected < 5:
            pooled_expected, pooled_observed = pooled_expected + expected, pooled_observed + observed
            continue
        statistic += (observed - expected) ** 2 / expected
        dof += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        dof += 1
    assert sum(counts.values()) == draws and set(counts) <= set(truth)  # nothing impossible was drawn
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def tiny_sft_base(path, tie: bool = False):
    """A tiny LLaMA with a text tokenizer saved at `path`, without mask tokens (a run must add them)."""
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), init_std=0.02, tie_word_embeddings=tie)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_sft_data(path, count: int = 32):
    """`count` alpaca records ("Add a and b.") written to `path` as JSON."""
    import json
    import random

    rng = random.Random(0)
    records = []
    for _ in range(count):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        records.append({"instruction": f"Add {a} and {b}.", "input": "",
                        "output": f"The sum of {a} and {b} is {a + b}. def add(a, b): return a + b"})
    path.write_text(json.dumps(records))
    return path


def tiny_sft_flags(base, data, output, *extra) -> list[str]:
    """`train_sft.py` flags of a short CPU run (k=3, batch 4, no checkpoints unless `extra` asks)."""
    return ["--stage", "sft", "--do_train", "--model_name_or_path", str(base), "--dataset", str(data),
            "--output_dir", str(output), "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--logging_steps", "4", "--save_strategy", "no", "--mask_num", "3", "--mask_prob", "1.0",
            "--cutoff_len", "128", "--use_cpu", "true", "--report_to", "none", "--seed", "0", *extra]
