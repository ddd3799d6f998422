"""Self-distillation data: prompts the project builds itself, answered by the base model's own greedy decoding.

Training SPACE's masks on the model's own outputs teaches them to draft exactly what the model will
verify. The prompts never contain benchmark problems:

* `coding`: requests built from the signatures and docstrings of Python standard-library functions
  (PSF-licensed text), phrased like the HumanEval instruction so the answers have the same shape, and a
  short list of general and coding instructions written for this project (`space/configs/distill/instructions.json`);
* `instructions`, `math`: general requests and word problems from project-written templates
  (`space.training.distill_prompts`, `space/configs/distill/families.json`);
* `summary`, `passage_qa`, `translation`, `two_turn`: built from the base model's finished answers of the
  first three families, so they are answered in a second stage.

Any prompt whose function name is a HumanEval entry point, or whose text shares a long word run
with a HumanEval prompt or one of the project's general evaluation prompts, is dropped (`Contamination`).

`generate_answers` runs batched greedy generation (left padding, explicit attention mask) and
appends each batch to a JSONL file, so an interrupted run resumes where it stopped.
`make_distill_data(DistillArguments)` is the whole step (`scripts/make_distill_data.py`): prompts,
the base model, answers. The settings that shape an answer (`--model`, `--max_new_tokens`) are recorded
beside the answers (`<output stem>.settings.json`), and a rerun with other ones is refused: one file never
mixes answers of two models or two length limits. Every flag is checked before the model loads.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import space
from space.cli import parse_flags, require_counts
from space.decoding.common import eos_ids
from space.errors import SpaceError
from space.eval.datasets import ORIGINAL_HUMANEVAL_INSTRUCTION, load_eval_dataset
from space.io import JsonlLog, OutputLock, shipped, write_json
from space.training.distill_prompts import (
    COUNTS,
    DERIVED_FAMILIES,
    derived_prompts,
    instruction_prompts,
    math_prompts,
    read_families,
)

STDLIB_MODULES = (
    "textwrap string shlex fnmatch glob posixpath genericpath shutil heapq bisect statistics random fractions "
    "difflib json base64 calendar colorsys functools collections copy pprint reprlib html urllib.parse email.utils "
    "ipaddress secrets uuid gzip tarfile zipfile configparser inspect ast tokenize linecache traceback warnings "
    "contextlib numbers re codecs locale gettext platform sysconfig tempfile filecmp mimetypes http.cookies quopri "
    "keyword operator decimal csv dataclasses enum graphlib pathlib plistlib typing wave zipapp sched selectors "
    "socket ssl subprocess threading queue smtplib imaplib ftplib poplib mailbox binascii hashlib hmac pickle "
    "pickletools copyreg shelve sqlite3 lzma bz2 logging getopt optparse argparse cmd code codeop pdb pstats "
    "timeit trace tracemalloc"
).split()
MAX_DOC_CHARS = 700
PROJECT_INSTRUCTIONS = shipped("configs", "distill", "instructions.json")
FIRST_STAGE = ("coding", "instructions", "math")
FAMILIES = FIRST_STAGE + DERIVED_FAMILIES  # the second stage's are built from the first stage's answers


@dataclass
class DistillArguments:
    """The flags of `scripts/make_distill_data.py`."""

    model: str = field(default="smollm2", metadata={
        "help": "base model (default: the embedded SmolLM2-135M-Instruct base)"})
    output: str = field(default="runs/default_model/distill.jsonl")
    instructions: str = field(default=str(PROJECT_INSTRUCTIONS),
                              metadata={"help": "comma list of JSON files with project-written instructions"})
    families: str = field(default=",".join(FAMILIES), metadata={
        "help": f"comma list of prompt families: {', '.join(FAMILIES)}"})
    limit: int | None = field(default=None, metadata={
        "help": "use only the first N prompts of the first stage (after shuffling), and at most N per family of "
                "the second"})
    batch_size: int = 32
    max_new_tokens: int = 256
    seed: int = 0
    progress: bool = True


def parse_distill_args(argv: list[str] | None = None) -> DistillArguments:
    (args,) = parse_flags((DistillArguments,), argv, "make_distill_data.py",
                          description="Build the self-distillation SFT data: project-built prompts answered by the "
                                      "base model (greedy).")
    return args


def make_distill_data(args: DistillArguments) -> list[dict]:
    """The prompts, answered by `args.model` into `args.output` (JSONL, resumed); returns every record."""
    check_distill_args(args)
    files = [Path(p) for p in args.instructions.split(",") if p]
    families = chosen_families(args.families)
    filters = Contamination.of_evaluation_sets()
    prompts, dropped = build_prompts(files, seed=args.seed, limit=args.limit, families=families, filters=filters)
    print(f"[distill] stage 1: {len(prompts)} prompts ({dropped} dropped as overlapping an evaluation prompt)",
          file=sys.stderr)
    output = Path(args.output)
    settings = distill_settings(args)
    check_settings(output, settings)  # answers made otherwise are refused before anything is touched
    with OutputLock.beside(output, "--output"):  # one writer: two would append every answer twice
        return _answer_all(args, output, settings, prompts, families, filters)


def _answer_all(args: DistillArguments, output: Path, settings: dict, prompts: list[dict], families: list[str],
                filters) -> list[dict]:
    """Both stages' answers into `output` (under the caller's lock)."""
    check_settings(output, settings)  # again, now that no other run can write them
    model, tokenizer = space.load_model(args.model)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(settings_path(output), settings)  # before the first answer, so no answer is ever without its settings
    start = time.perf_counter()
    records = generate_answers(model, tokenizer, prompts, output, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, progress=args.progress)
    second = [family for family in families if family in DERIVED_FAMILIES]
    if second:
        counts = {family: (COUNTS[family] if family in second else 0) for family in COUNTS}
        if args.limit:
            counts = {family: min(count, args.limit) for family, count in counts.items()}
        derived = [p for p in derived_prompts(records, read_families(), seed=args.seed, counts=counts)
                   if not filters.flags(p)]
        print(f"[distill] stage 2: {len(derived)} prompts built from the stage-1 answers", file=sys.stderr)
        records += generate_answers(model, tokenizer, derived, output, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, progress=args.progress)
    tokens = sum(len(r["output_ids"]) for r in records)
    print(f"[distill] {len(records)} answers, {tokens} tokens, {time.perf_counter() - start:.0f} s -> {output}",
          file=sys.stderr)
    return records


def check_distill_args(args: DistillArguments) -> None:
    """Every flag of the step, before the model loads."""
    require_counts(args, ("batch_size", "max_new_tokens", "limit"), hints={"limit": "leave it out to use them all"})
    output = Path(args.output)
    if output.is_dir():
        raise SpaceError(f"--output {output} is a directory; name a .jsonl file (e.g. {output / 'distill.jsonl'})")
    blocking = next((parent for parent in output.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise SpaceError(f"--output {output}: {blocking} is a file, not a directory")
    chosen_families(args.families)
    files = [Path(p) for p in args.instructions.split(",") if p]
    for path in files:
        if not path.is_file():
            raise SpaceError(f"--instructions: file not found: {path}")
        project_prompts(path)  # parses, or names the file and what is wrong with it


def distill_settings(args: DistillArguments) -> dict:
    """What shapes an answer: the model (a local path resolved, so `./m` and `m` agree) and the length limit."""
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    return dict(model=model, max_new_tokens=args.max_new_tokens)


def settings_path(output: Path) -> Path:
    return output.with_name(output.stem + ".settings.json")


def check_settings(output: Path, settings: dict) -> None:
    """Refuse to add answers to a file made with other settings, naming the flag that differs."""
    if not output.is_file() or output.stat().st_size == 0:
        return
    path = settings_path(output)
    if not path.is_file():  # not written by this step (no answer is appended before its settings) or by an older one
        if not any("id" in record and "output_ids" in record for record in JsonlLog(output).read()):
            raise SpaceError(f"--output {output} exists and holds no distillation answers; name a new file")
        print(f"[distill] {output} has no {path.name}; its answers are taken as made with {settings}", file=sys.stderr)
        return
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpaceError(f"{path} is damaged ({error}); delete it and {output} to start afresh") from error
    for name, value in settings.items():
        if recorded.get(name) != value:
            raise SpaceError(f"--{name} {value}: {output} holds answers made with --{name} {recorded.get(name)} "
                             f"({path.name}); pass --{name} {recorded.get(name)} to continue it, or another --output "
                             "to start a new file")


def stdlib_functions() -> list[tuple[str, str, str, str]]:
    """(module, name, signature, docstring) of public pure-Python stdlib functions with real docstrings."""
    found = []
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 40:
                continue
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):
                continue
            found.append((module_name, name, signature, doc))
    return found


def function_stub(name: str, signature: str, doc: str) -> str:
    doc = doc.strip()
    if len(doc) > MAX_DOC_CHARS:
        doc = doc[:MAX_DOC_CHARS].rsplit("\n", 1)[0]
    body = "\n".join(("    " + line) if line else "" for line in doc.splitlines())
    return f'def {name}{signature}:\n    """\n{body}\n    """\n'


def coding_prompts(seed: int = 0) -> list[dict]:
    """Coding requests from stdlib functions; most use the HumanEval instruction wording."""
    rng = random.Random(seed)
    prompts = []
    for module, name, signature, doc in stdlib_functions():
        stub = function_stub(name, signature, doc)
        if rng.random() < 0.8:
            text = ORIGINAL_HUMANEVAL_INSTRUCTION + "\n" + stub
        else:
            first = doc.strip().split("\n\n")[0].replace("\n", " ")
            text = f"Write a Python function `{name}{signature}` that does the following: {first}"
        prompts.append(dict(id=f"stdlib/{module}.{name}", prompt=text, entry_point=name))
    return prompts


def project_prompts(path: Path) -> list[dict]:
    """The instructions written for this project (one JSON list of strings)."""
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpaceError(f"--instructions {path}: not valid UTF-8 JSON ({error}); it must be a JSON list of strings") \
            from error
    if not isinstance(texts, list) or not all(isinstance(text, str) and text.strip() for text in texts):
        raise SpaceError(f"--instructions {path}: expected a JSON list of non-empty strings")
    return [dict(id=f"{path.stem}/{i}", prompt=text, entry_point=None) for i, text in enumerate(texts)]


def chosen_families(families: str) -> list[str]:
    chosen = [name.strip() for name in families.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FAMILIES]
    if unknown or not chosen:
        raise SpaceError(f"--families: unknown or empty ({', '.join(unknown) or 'none given'}); choose from "
                         f"{', '.join(FAMILIES)}")
    if not set(chosen) & set(FIRST_STAGE):
        raise SpaceError(f"--families {families}: the second stage is built from answers of the first; add one of "
                         f"{', '.join(FIRST_STAGE)}")
    return chosen


def _word_runs(text: str, length: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}


@dataclass
class Contamination:
    """What a training prompt must not share with the evaluation sets: HumanEval entry points, and 8-word runs
    of HumanEval prompts (its shared instruction aside) and of the project's general prompts."""

    entry_points: set[str]
    runs: set[tuple[str, ...]]

    @classmethod
    def of_evaluation_sets(cls) -> "Contamination":
        humaneval = load_eval_dataset("human_eval")
        entry_points = {p.problem.get("entry_point") or _entry_point(p.problem["declaration"]) for p in humaneval}
        runs = set().union(*(_word_runs(p.problem["prompt"]) for p in humaneval))
        runs -= _word_runs(ORIGINAL_HUMANEVAL_INSTRUCTION)  # the shared instruction is not contamination
        for prompt in load_eval_dataset("general", execute=False):
            runs |= set().union(*(_word_runs(turn) for turn in prompt.turns))
        return cls(entry_points, runs)

    def flags(self, prompt: dict) -> bool:
        """True when the prompt (or its history) names a HumanEval function or shares an 8-word run."""
        if prompt.get("entry_point") and prompt["entry_point"] in self.entry_points:
            return True
        texts = [prompt["prompt"], *(turn for pair in prompt.get("history") or [] for turn in pair)]
        return any(_word_runs(text) & self.runs for text in texts)


def build_prompts(project_files: list[Path], seed: int = 0, limit: int | None = None,
                  families: list[str] = FIRST_STAGE, filters: Contamination | None = None) -> tuple[list[dict], int]:
    """The first stage's clean prompts, shuffled with `seed`; also returns how many were dropped as contaminated."""
    filters = filters or Contamination.of_evaluation_sets()
    candidates = []
    if "coding" in families:
        candidates += coding_prompts(seed)
        for path in project_files:
            candidates += project_prompts(path)
    if "instructions" in families or "math" in families:
        templates = read_families()
        candidates += instruction_prompts(templates, seed) if "instructions" in families else []
        candidates += math_prompts(templates, seed) if "math" in families else []
    clean = [p for p in candidates if not filters.flags(p)]
    random.Random(seed).shuffle(clean)
    return (clean if limit is None else clean[:limit]), len(candidates) - len(clean)


def _entry_point(declaration: str) -> str:
    match = re.search(r"def (\w+)\(", declaration)
    return match.group(1) if match else ""


def _cut_off(ids: list[int], stops: set[int]) -> bool:
    """An answer that does not end with a stop token was cut off by the length limit."""
    return not ids or ids[-1] not in stops


def _messages(prompt: dict) -> list[dict]:
    """The chat of a prompt: its history's turns, then the request."""
    messages = []
    for query, response in prompt.get("history") or []:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return messages + [{"role": "user", "content": prompt["prompt"]}]


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[dict], output: Path, batch_size: int = 16,
                     max_new_tokens: int = 256, progress: bool = True) -> list[dict]:
    """Greedy answers in the chat template, appended to `output` (JSONL) batch by batch; resumes."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    stops = set(eos_ids(model, eos))
    log = JsonlLog(output)
    done = {}
    for record in log.resume():  # a line torn by an interruption is regenerated
        # files written before the field existed: an answer without a stop token was cut off
        record.setdefault("unfinished", _cut_off(record["output_ids"], stops))
        done[record["id"]] = record
    if any("unfinished" not in r for r in log.read()):
        log.rewrite(done.values())
    todo = [p for p in prompts if p["id"] not in done]
    tokenizer.padding_side = "left"
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0)
    # similar lengths in a batch waste less padding
    todo.sort(key=lambda p: len(p["prompt"]) + sum(len(turn) for pair in p.get("history") or [] for turn in pair))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in tqdm(batches, desc="self-distillation answers", disable=not progress, unit="batch"):
        texts = [tokenizer.apply_chat_template(_messages(p), tokenize=False, add_generation_prompt=True) for p in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        generated = model.generate(**encoded, generation_config=config)[:, encoded.input_ids.shape[1] :]
        records = []
        for prompt, ids in zip(batch, generated.tolist()):
            ids = ids[: next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))]  # drop the padding
            answer = tokenizer.decode(ids, skip_special_tokens=True)
            record = dict(id=prompt["id"], instruction=prompt["prompt"], input="", output=answer,
                          output_ids=ids, unfinished=_cut_off(ids, stops))
            if prompt.get("history"):
                record["history"] = prompt["history"]  # alpaca's [[query, response], ...] before this turn
            records.append(record)
        log.append(records)
        done.update((record["id"], record) for record in records)
    return [done[p["id"]] for p in prompts if p["id"] in done]
