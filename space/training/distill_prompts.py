"""The self-distillation prompt families beyond coding: the kinds of request a chat model gets.

Every prompt is built here from project-written word lists and templates (`space/configs/distill/families.json`),
never taken from a benchmark. Two stages, because some families need text to work on:

* stage one (`instruction_prompts`, `math_prompts`): explanations, tips, pros and cons, short writing,
  emails, comparisons, how-tos, articles and stories (the passages of stage two), and arithmetic word problems
  with numbers drawn from each template's ranges;
* stage two (`derived_prompts`), built from the base model's own finished stage-one answers: summaries of a
  passage, questions answered from a passage, translation requests (the passage's first sentences), and
  two-turn chats (a stage-one exchange as the history, then a follow-up request).

Ids name the template and the choices (`explain/12/3`, `summary/passages/4/0`), so a rerun builds the same
prompts under the same ids and the answer file resumes. `space.training.distill` answers them and drops any
prompt that shares a long word run with a HumanEval or general-set evaluation prompt.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from space.errors import SpaceError
from space.io import shipped

FAMILIES_FILE = shipped("configs", "distill", "families.json")
# stage-one families whose answers become passages (prose, not code or arithmetic)
INSTRUCTION_FAMILIES = ("explain", "tips", "pros_cons", "writing", "email", "compare", "howto", "passages")
DERIVED_FAMILIES = ("summary", "passage_qa", "translation", "two_turn")
# how many prompts each family contributes (instruction families with few combinations give them all)
COUNTS = dict(explain=240, tips=160, pros_cons=90, writing=200, email=150, compare=75, howto=90, passages=165,
              math=400, summary=300, passage_qa=300, translation=240, two_turn=300)
PASSAGE_TOKENS = (60, 320)  # answers of this many tokens serve as passages
HISTORY_TOKENS = 220  # the longest first answer a two-turn chat carries
TRANSLATION_SENTENCES = 3


def read_families(path: Path = FAMILIES_FILE) -> dict:
    try:
        families = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpaceError(f"prompt families file {path}: {error}") from error
    missing = [name for name in (*INSTRUCTION_FAMILIES, "math", *DERIVED_FAMILIES) if name not in families]
    if missing:
        raise SpaceError(f"prompt families file {path} lacks {', '.join(missing)}")
    return families


def _combinations(family: str, spec: dict) -> list[tuple[str, str]]:
    """Every (id, text) a family's templates and word lists make."""
    made = []
    for t, template in enumerate(spec["templates"]):
        slots = [name for name in re.findall(r"{(\w+)}", template) if name != "n"]
        if family == "compare":
            made += [(f"{family}/{t}/{i}", template.format(a=a, b=b)) for i, (a, b) in enumerate(spec["pair"])]
            continue
        choices = [[]]
        for slot in dict.fromkeys(slots):
            choices = [chosen + [(slot, i, value)] for chosen in choices for i, value in enumerate(spec[slot])]
        for chosen in choices:
            values = {slot: value for slot, _, value in chosen}
            values["n"] = 3 + sum(i for _, i, _ in chosen) % 5  # "give me N tips": 3..7, fixed per combination
            made.append((f"{family}/{t}/" + "/".join(str(i) for _, i, _ in chosen), template.format(**values)))
    return made


def instruction_prompts(families: dict, seed: int = 0, counts: dict = COUNTS) -> list[dict]:
    """Stage one's general requests: up to `counts[family]` per family, drawn without repeats."""
    prompts = []
    for family in INSTRUCTION_FAMILIES:
        made = _combinations(family, families[family])
        random.Random(f"{seed}/{family}").shuffle(made)
        prompts += [dict(id=key, prompt=text, entry_point=None, family=family) for key, text in made[: counts[family]]]
    return prompts


def math_prompts(families: dict, seed: int = 0, count: int = COUNTS["math"]) -> list[dict]:
    """Arithmetic word problems: each template filled with numbers from its ranges (and `_step`s)."""
    spec, rng = families["math"], random.Random(f"{seed}/math")
    prompts, seen = [], set()
    for i in range(count):
        t = i % len(spec["templates"])
        template = spec["templates"][t]
        values = dict(name=rng.choice(spec["name"]), item=rng.choice(spec["item"]))
        for slot in re.findall(r"{([a-d])}", template["text"]):
            low, high = template[slot]
            values[slot] = rng.randrange(low, high + 1, template.get(f"{slot}_step", 1))
        text = template["text"].format(**values)
        instruction = spec["instructions"][i % len(spec["instructions"])]
        text = f"{instruction}\n\n{text}" if instruction else text
        if text not in seen:
            seen.add(text)
            prompts.append(dict(id=f"math/{t}/{i}", prompt=text, entry_point=None, family="math"))
    return prompts


CODE_PREFIXES = ("stdlib/", "instructions/")  # the coding family's ids (space.training.distill)
GROUPS = ("code", "general")  # how held-out measurements split the answers (`prompt_group`)


def prompt_group(record_id: str) -> str:
    """`code` for the coding family (stdlib requests and the project's instruction list) and everything built on
    its answers, `general` for the rest."""
    return "code" if root_id(record_id).startswith(CODE_PREFIXES) else "general"


def root_id(record_id: str) -> str:
    """The stage-one answer a prompt was built from (`summary/explain/3/1` -> `explain/3/1`), or the id itself.

    Everything built from one answer shares its root, so a held-out answer takes its derived prompts with it."""
    family, _, rest = record_id.partition("/")
    if family not in DERIVED_FAMILIES:
        return record_id
    return rest if family == "summary" else rest.rsplit("/", 1)[0]


def _usable(record: dict, longest: int) -> bool:
    """A finished answer without code, short enough to quote."""
    return (not record.get("unfinished") and PASSAGE_TOKENS[0] <= len(record["output_ids"]) <= longest
            and "```" not in record["output"] and not record.get("history"))


def _first_sentences(text: str, count: int) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(sentences[:count])


def derived_prompts(records: list[dict], families: dict, seed: int = 0, counts: dict = COUNTS) -> list[dict]:
    """Stage two from stage one's answers (`records`: dicts with id, instruction, output, output_ids, unfinished)."""
    by_id = sorted(records, key=lambda record: record["id"])
    passages = [r for r in by_id if r["id"].split("/")[0] in INSTRUCTION_FAMILIES and _usable(r, PASSAGE_TOKENS[1])]
    prompts = []

    def pick(family: str, pool: list[dict]) -> list[dict]:
        pool = list(pool)
        random.Random(f"{seed}/{family}").shuffle(pool)
        return pool[: counts[family]]

    spec = families["summary"]
    for n, record in enumerate(pick("summary", passages)):
        template = spec["templates"][n % len(spec["templates"])]
        prompts.append(dict(id=f"summary/{record['id']}", prompt=template.format(passage=record["output"].strip()),
                            family="summary"))
    spec = families["passage_qa"]
    for n, record in enumerate(pick("passage_qa", passages)):
        template = spec["templates"][n % len(spec["templates"])]
        q = n % len(spec["question"])
        prompts.append(dict(id=f"passage_qa/{record['id']}/{q}", family="passage_qa",
                            prompt=template.format(passage=record["output"].strip(), question=spec["question"][q])))
    spec = families["translation"]
    for n, record in enumerate(pick("translation", passages)):
        template = spec["templates"][n % len(spec["templates"])]
        language = spec["language"][n % len(spec["language"])]
        text = _first_sentences(record["output"], TRANSLATION_SENTENCES)
        prompts.append(dict(id=f"translation/{record['id']}/{language}", family="translation",
                            prompt=template.format(passage=text, language=language)))
    spec = families["two_turn"]
    firsts = [r for r in by_id if _usable(r, HISTORY_TOKENS) or (r["id"].startswith(CODE_PREFIXES)
                                                               and not r.get("unfinished")
                                                               and len(r["output_ids"]) <= HISTORY_TOKENS)]
    for n, record in enumerate(pick("two_turn", firsts)):
        coding = "```" in record["output"] or record["id"].startswith("stdlib/")
        follow_ups = spec["coding"] if coding else spec["general"]
        f = n % len(follow_ups)
        prompts.append(dict(id=f"two_turn/{record['id']}/{f}", prompt=follow_ups[f], family="two_turn",
                            history=[[record["instruction"], record["output"]]]))
    for prompt in prompts:
        prompt.setdefault("entry_point", None)
    return prompts

