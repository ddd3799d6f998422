"""Prompt templates for SFT: conversation turns -> `(source_ids, target_ids)` pairs, one per turn.

* `default`: the SPACE recipe's template (docs/spec/SPACE.md §1.3): turn 0 is
  `[BOS] system "\\n" "Human: {q}\\nAssistant: "`,
  later turns `"\\n" [BOS] "Human: {q}\\nAssistant: "`; the target is the response followed by EOS.
* `vicuna`: the same structure with `"USER: {q} ASSISTANT: "` and no separator (LLaMA-Factory 0.2).
* `chat_template`: the tokenizer's own chat template, cut into per-turn pieces.

With `unfinished=True` the last response was cut off at a length limit and gets no EOS or end-of-turn
markup: training one there would teach the model to stop mid-answer.

Every piece is tokenized separately with `add_special_tokens=False`, as the original does, so a
sentencepiece tokenizer adds its dummy-prefix space at each piece start (bit-identical data).
"""

from __future__ import annotations

from dataclasses import dataclass

from space.errors import SpaceError
from space.eval.prompts import VICUNA_SYSTEM

Turn = tuple[str, str]  # (query, response)
EncodedTurn = tuple[list[int], list[int]]  # (source_ids, target_ids)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


@dataclass(frozen=True)
class PieceTemplate:
    """A template made of literal pieces, encoded piece by piece (LLaMA-Factory 0.2 style)."""

    name: str
    prompt: str  # with "{query}"
    separator: str
    system: str

    def encode(self, tokenizer, turns: list[Turn], system: str | None = None,
               unfinished: bool = False) -> list[EncodedTurn]:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id]
        separator = _encode(tokenizer, self.separator)
        system_text = self.system if system is None else system
        pairs = []
        for index, (query, response) in enumerate(turns):
            if index == 0:
                system_ids = _encode(tokenizer, system_text)
                prefix = bos + system_ids + separator if system_ids else bos
            else:
                prefix = separator + bos
            source = prefix + _encode(tokenizer, self.prompt.format(query=query))
            last_cut = unfinished and index == len(turns) - 1
            pairs.append((source, _encode(tokenizer, response) + ([] if last_cut else eos)))
        return pairs


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's own chat template: each turn's source and target are the text it adds."""

    name: str = "chat_template"

    def encode(self, tokenizer, turns: list[Turn], system: str | None = None,
               unfinished: bool = False) -> list[EncodedTurn]:
        if not getattr(tokenizer, "chat_template", None):
            raise SpaceError("template 'chat_template' needs a tokenizer with a chat template; use --template default")
        messages = [{"role": "system", "content": system}] if system else []
        pairs, rendered = [], ""
        for query, response in turns:
            messages.append({"role": "user", "content": query})
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            messages.append({"role": "assistant", "content": response})
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not (prompt.startswith(rendered) and full.startswith(prompt)):
                raise SpaceError("the tokenizer's chat template does not render conversations as growing prefixes; "
                                 "use --template default or vicuna")
            target = full[len(prompt):]
            if unfinished and len(pairs) == len(turns) - 1:  # cut after the response: no end-of-turn markup
                end = target.find(response)
                if end < 0:
                    raise SpaceError("the chat template changes the response text, so an unfinished answer cannot be "
                                     "cut before its end of turn; use --template default")
                target = target[: end + len(response)]
            pairs.append((_encode(tokenizer, prompt[len(rendered):]), _encode(tokenizer, target)))
            rendered = full
        return pairs


TEMPLATES = {
    "default": PieceTemplate("default", prompt="Human: {query}\nAssistant: ", separator="\n", system=VICUNA_SYSTEM),
    "vicuna": PieceTemplate("vicuna", prompt="USER: {query} ASSISTANT: ", separator="", system=VICUNA_SYSTEM),
    "chat_template": ChatTemplate(),
}


def get_template(name: str):
    if name not in TEMPLATES:
        raise SpaceError(f"unknown template {name!r}; available: {sorted(TEMPLATES)}")
    return TEMPLATES[name]
