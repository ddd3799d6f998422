"""Model input text for a conversation, per prompt style.

* `original` (docs/spec/SPACE.md §4.2): the original eval strings per `--model_type`: `llama` is the Vicuna system
  sentence, `"\\nHuman:" + text + "\\nAssistant:"` (no space after `Human:`, no trailing space: it
  differs from the training template, faithfully); `llama-2-chat` uses `[INST]...[/INST]` with a
  `<<SYS>>` block and ` </s><s>` between turns; `qwen` ChatML; `chatglm` `[Round i]\\n\\n问：...\\n\\n答：`.
  The tokenizer adds BOS (`add_special_tokens=True`), as the original.
* `chat_template`: the tokenizer's own chat template (special tokens come from the template).
"""

from __future__ import annotations

from space.errors import SpaceError

MODEL_TYPES = ("llama", "llama-2-chat", "qwen", "chatglm")
PROMPT_STYLES = ("original", "chat_template")
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
)

# The Vicuna system sentence: the original eval string's and the training templates' (`space.training.templates`)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def render(turns: list[tuple[str, str | None]], style: str, model_type: str = "llama", tokenizer=None) -> str:
    """Text for `turns` = [(user, assistant), ..., (user, None)]: the prompt for the last answer."""
    if style == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise SpaceError("prompt style chat_template needs a tokenizer with a chat template; "
                             "use --prompt_style original")
        messages = []
        for user, assistant in turns:
            messages.append({"role": "user", "content": user})
            if assistant is not None:
                messages.append({"role": "assistant", "content": assistant})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if style != "original":
        raise SpaceError(f"unknown prompt style {style!r}; use one of {list(PROMPT_STYLES)}")
    if model_type not in MODEL_TYPES:
        raise SpaceError(f"unknown --model_type {model_type!r}; use one of {list(MODEL_TYPES)}")
    text = ""
    for index, (user, assistant) in enumerate(turns):
        text += _turn(model_type, index, user)
        if assistant is not None:
            text += _answer(model_type, assistant)
    return text


def add_special_tokens(style: str) -> bool:
    return style == "original"


def _turn(model_type: str, index: int, user: str) -> str:
    if model_type == "llama":
        return (VICUNA_SYSTEM + "\n" if index == 0 else "\n") + "Human:" + user + "\nAssistant:"
    if model_type == "llama-2-chat":
        system = f"<<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n" if index == 0 else ""
        return ("" if index == 0 else " </s><s>") + f"[INST]{system}{user} [/INST]"
    if model_type == "qwen":
        system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if index == 0 else ""
        return f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return f"[Round {index}]\n\n问：{user}\n\n答："  # chatglm


def _answer(model_type: str, assistant: str) -> str:
    if model_type == "llama":
        return "\n" + assistant
    if model_type == "llama-2-chat":
        return " " + assistant
    if model_type == "qwen":
        return assistant + "<|im_end|>\n"
    return assistant + "\n\n"
