"""Timed, interleaved runs of several decoding methods on the same prompts.

Fair timing: every method uses the same model object (dtype, attention kernel), warm-up runs come
first, the order of methods rotates from prompt to prompt so drift hits all of them alike, CUDA is
synchronised around each timed call, and token counts come from the generated ids. Where the answers
go, and how a rerun resumes, is `space.eval.results`.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

import space
from space.decoding import batching_methods, session_options
from space.eval.datasets import EvalPrompt
from space.eval.metrics import split_label
from space.eval.prompts import add_special_tokens, render
from space.eval.results import ResultStore
from space.models import synchronize


def decoder_name(label: str) -> str:
    """The decoder a method label runs: `space@3` runs `space` (with mask_num 3)."""
    return split_label(label)[0]


def timed_decode(model, input_ids: torch.Tensor | list[torch.Tensor], method: str, options: dict,
                 device: torch.device | None = None):
    """`space.decode` of `method` (a label: `space@3` runs `space`) and its wall time in seconds, with the device's
    queued work waited for on both sides: the one timing of a decode, for every measurement. A list of 1-D prompts
    is one `space.decode_batch` call (the result: a list)."""
    device = device if device is not None else model.get_input_embeddings().weight.device
    synchronize(device)
    start = time.perf_counter()
    if isinstance(input_ids, list):
        result = space.decode_batch(model, input_ids, decoder_name(method), **options)
    else:
        result = space.decode(model, input_ids, decoder_name(method), **options)
    synchronize(device)
    return result, time.perf_counter() - start


def encode(tokenizer, text: str, style: str, device: torch.device) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens(style)).input_ids.to(device)


def first_turn_ids(tokenizer, prompt: EvalPrompt, style: str, model_type: str, device: torch.device) -> torch.Tensor:
    """The `[1, n]` ids every method answers for the prompt's first turn."""
    return encode(tokenizer, render([(prompt.turns[0], None)], style, model_type, tokenizer), style, device)


def warm_up(model, tokenizer, prompt: EvalPrompt, methods: list[str], options: dict[str, dict], style: str,
            model_type: str, runs: int, device: torch.device) -> None:
    """Untimed short runs of every method: first-call costs (kernels, allocator) are paid here."""
    input_ids = first_turn_ids(tokenizer, prompt, style, model_type, device)
    for _ in range(runs):
        for method in methods:
            space.decode(model, input_ids, decoder_name(method), **dict(options[method], max_new_tokens=16))


def run_prompts(
    model,
    tokenizer,
    prompts: list[EvalPrompt],
    methods: list[str],
    options: dict[str, dict],
    store: ResultStore,
    style: str,
    model_type: str = "llama",
    progress: bool = True,
    time_limit: float | None = None,
    carry_state: bool = True,
    batch_size: int = 1,
    should_stop=None,
    rank: int | None = None,
) -> list[dict]:
    """Answer every unfinished prompt with every method; returns all records (old and new).

    With `time_limit` (seconds), no new prompt (or batch) is started once that much time has passed; the same
    call later resumes where this one stopped.

    `carry_state`: the state a method carries from prompt to prompt (`space.decoding.session_options`: SPACE's
    acceptance rates, self_spec's γ) goes on from one prompt to the next in the prompts' order, as in the paper's
    evaluation, so a prompt's steps depend on the prompts before it. Each answer keeps its method's state after it
    (`session`); a resumed run takes it up from the stored answers, so it measures what an uninterrupted run
    would. Off, every prompt starts from a fresh state.

    `batch_size` > 1: consecutive unfinished prompts are answered `batch_size` at a time, turn by turn, each method
    that batches (`space.decoding.batching_methods`) in one `decode_batch` call per turn (the others one prompt at
    a time). An answer's `seconds` is its share of the call (the call's time over its rows: the totals are the
    wall time), `batch_seconds` the call's time (the row's latency) and `batch_size` its rows. Greedy batched AR
    rows are also decoded alone, untimed: `equals_batch1_ar` says whether the row is that batch-1 answer (every other
    method's identity is measured against the batched AR answers).

    Data-parallel runs (`space.eval.ranks`): `should_stop()` is asked before each new prompt group (another rank
    failed: stop as at a time limit), and `rank` is recorded in every answer.
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    device = model.get_input_embeddings().weight.device
    stored = {(r["id"], r["turn"], r["method"]): r for r in store.records()}
    done = store.done_ids(prompts, methods)
    totals = {method: [0, 0.0] for method in methods}  # tokens, seconds: for the running speedup
    sessions = {method: session_options(decoder_name(method)) for method in methods}
    bar = tqdm(total=len(prompts) - len(done), desc="evaluating", disable=not progress, unit="prompt")
    group: list[EvalPrompt] = []
    for index, prompt in enumerate(prompts + [None]):  # None: the end, which answers the last group
        if prompt is not None and prompt.id in done:
            if carry_state:  # answered before: its methods' states after it, as an uninterrupted run had them
                last_turn = len(prompt.turns) - 1
                sessions = {method: restored(sessions[method], stored[(prompt.id, last_turn, method)])
                            for method in methods}
            continue
        if prompt is not None:
            group.append(prompt)
        if group and (prompt is None or len(group) == batch_size):
            if (deadline is not None and time.monotonic() >= deadline) or (should_stop and should_stop()):
                break
            if not carry_state:
                sessions = {method: session_options(decoder_name(method)) for method in methods}
            for answered, records in answer_group(model, tokenizer, group, methods, options, sessions, style,
                                                  model_type, index, device, carry_state, totals):
                store.add_prompt(answered.id, [dict(r, rank=rank) for r in records] if rank is not None else records)
            bar.update(len(group))
            bar.set_postfix_str(_running_speedup(totals))
            group = []
    bar.close()
    return store.records()


def answer_group(model, tokenizer, group: list[EvalPrompt], methods: list[str], options: dict[str, dict],
                 sessions: dict, style: str, model_type: str, index: int, device, carry_state: bool,
                 totals: dict) -> list[tuple[EvalPrompt, list[dict]]]:
    """Every method's answers to every turn of the prompts of `group` (`index`: where the group ends in the run,
    which rotates the methods' order); returns each prompt with its records."""
    order = methods[index % len(methods):] + methods[: index % len(methods)]  # rotate: drift hits all alike
    histories = {(prompt.id, method): [] for prompt in group for method in methods}
    records = {prompt.id: [] for prompt in group}
    for turn in range(max(len(prompt.turns) for prompt in group)):
        rows = [prompt for prompt in group if len(prompt.turns) > turn]
        for method in order:
            inputs = [encode(tokenizer, render(histories[prompt.id, method] + [(prompt.turns[turn], None)], style,
                                               model_type, tokenizer), style, device) for prompt in rows]
            chosen = dict(options[method], **sessions[method])
            checks = [None] * len(rows)
            if len(rows) > 1 and decoder_name(method) in batching_methods():
                results, seconds = timed_decode(model, [ids[0] for ids in inputs], method, chosen, device)
                timings = [(seconds / len(rows), seconds, len(rows))] * len(rows)
                if decoder_name(method) == "ar" and not chosen.get("do_sample"):
                    # untimed: each batched AR row against the same prompt decoded alone
                    checks = [space.decode(model, ids, "ar", **chosen).tokens.tolist() == result.tokens.tolist()
                              for ids, result in zip(inputs, results)]
            else:
                results, timings = [], []
                for ids in inputs:
                    result, seconds = timed_decode(model, ids, method, chosen, device)
                    results.append(result)
                    timings.append((seconds, None, 1))
            for prompt, ids, result, (seconds, batch_seconds, rows_in_call), check in zip(rows, inputs, results,
                                                                                         timings, checks):
                answer = tokenizer.decode(result.tokens, skip_special_tokens=True)
                histories[prompt.id, method].append((prompt.turns[turn], answer))
                records[prompt.id].append(dict(
                    id=prompt.id, turn=turn, method=method, category=prompt.category, text=answer,
                    ids=result.tokens.tolist(), prompt_tokens=ids.shape[1], seconds=round(seconds, 5),
                    **({"batch_seconds": round(batch_seconds, 5), "batch_size": rows_in_call}
                       if batch_seconds is not None else {}),
                    **({"equals_batch1_ar": check} if check is not None else {}),
                    **result.stats.record_fields(),  # steps and every per-step / per-round list of the method
                    **({"session": {name: state.to_json() for name, state in sessions[method].items()}}
                       if carry_state and sessions[method] else {}),
                ))
                totals[method][0] += len(result.tokens)
                totals[method][1] += seconds
    return [(prompt, records[prompt.id]) for prompt in group]


def restored(fresh: dict, record: dict) -> dict:
    """A method's carried state as a stored answer (`record`) left it; `fresh` when it kept none."""
    saved = record.get("session") or {}
    return {name: type(state).from_json(saved[name]) if name in saved else state for name, state in fresh.items()}


def _running_speedup(totals: dict[str, list]) -> str:
    base = next((b for b in ("ar", "hf") if b in totals and totals[b][1] > 0), None)
    if base is None:
        return ""
    base_rate = totals[base][0] / totals[base][1]
    parts = [f"{m} x{(tokens / seconds) / base_rate:.2f}" for m, (tokens, seconds) in totals.items()
             if m != base and seconds > 0]
    return f"vs {base}: " + ", ".join(parts)
