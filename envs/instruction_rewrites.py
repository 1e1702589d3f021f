"""Rewrites of LIBERO instructions for training: other verbs, phrasing, word order, object names.

Provenance: every template, verb and synonym below was written by this project's team
(2026-12-03) for *training* only, from ordinary English usage; none is copied from a paraphrase
benchmark (LIBERO-Para, LIBERO-Plus, LIBERO-PRO). The evaluation rewrites are a separate,
hand-written file (docs/language/) that shares no template with this one, and a policy is also
scored on rewrites nobody here wrote, so this list must teach the policy to read the words,
not to memorise a list.

How a rewrite is made: the instruction is matched against a few frames (the shapes LIBERO's
instructions take), its slots (the object, the destination, a spatial qualifier) are filled
into other templates of the same meaning, and object names are swapped for synonyms. An
instruction no frame matches still gets verb-level rewrites. Each rewrite is tagged with
how it was made (``kind``): ``"phrasing"`` (verbs, word order, politeness) or ``"synonym"``
(an object named otherwise), so results can be broken down the way LIBERO-Para does.

    rewrites("pick up the ketchup and place it in the basket")
    -> (Rewrite("grab the ketchup and put it in the basket", "phrasing"), ...,
        Rewrite("take the ketchup bottle and drop it into the basket", "synonym"), ...)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

PHRASING, SYNONYM = "phrasing", "synonym"


@dataclass(frozen=True)
class Rewrite:
    text: str
    kind: str  # PHRASING | SYNONYM


# Frame 1, "pick up the OBJ [QUALIFIER] and place it PREP the DEST" (LIBERO-Object, -Spatial, one
# LIBERO-10 task). The qualifier is LIBERO-Spatial's "between the plate and the ramekin" etc.
_PICK_PLACE = re.compile(
    r"^pick up the (?P<obj>.+?)(?: (?P<qual>(?:between|next to|from|on|in) .+?))? and place it "
    r"(?P<prep>in|on|into|onto) the (?P<dest>.+)$")
# Frame 2, "put the OBJ PREP the DEST" (LIBERO-Goal).
_PUT = re.compile(r"^put the (?P<obj>.+?) (?P<prep>in|on|on top of|inside) the (?P<dest>.+)$")

# Templates of frame 1 and 2's meaning: {obj} (with its qualifier), {dest}, {prep_in} (in / on),
# {prep_into} (into / onto).
_TEMPLATES = (
    "pick up the {obj} and put it {prep_in} the {dest}",
    "grab the {obj} and place it {prep_in} the {dest}",
    "take the {obj} and drop it {prep_into} the {dest}",
    "lift the {obj} and set it {prep_in} the {dest}",
    "pick the {obj} up and place it {prep_in} the {dest}",
    "get the {obj} and move it {prep_into} the {dest}",
    "put the {obj} {prep_in} the {dest}",
    "place the {obj} {prep_into} the {dest}",
    "move the {obj} {prep_into} the {dest}",
    "set the {obj} {prep_in} the {dest}",
    "the {obj} goes {prep_in} the {dest}",
    "{prep_into} the {dest} with the {obj}",
    "please put the {obj} {prep_in} the {dest}",
    "could you place the {obj} {prep_in} the {dest}",
    "find the {obj} and put it {prep_in} the {dest}",
    "grab the {obj}, then place it {prep_in} the {dest}",
)

# Other names for the objects of the LIBERO suites, as a person might say them.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "alphabet soup": ("alphabet soup can", "can of alphabet soup", "soup can"),
    "cream cheese": ("cream cheese box", "box of cream cheese", "cheese box"),
    "salad dressing": ("salad dressing bottle", "bottle of salad dressing", "dressing"),
    "bbq sauce": ("barbecue sauce", "bbq sauce bottle", "bottle of barbecue sauce"),
    "ketchup": ("ketchup bottle", "bottle of ketchup", "tomato ketchup"),
    "tomato sauce": ("tomato sauce can", "can of tomato sauce", "tomato sauce tin"),
    "butter": ("butter box", "box of butter", "pack of butter"),
    "milk": ("milk carton", "carton of milk", "milk box"),
    "chocolate pudding": ("chocolate pudding box", "pudding", "box of chocolate pudding"),
    "orange juice": ("orange juice carton", "carton of orange juice", "juice"),
    "black bowl": ("black dish", "dark bowl", "bowl"),
    "bowl": ("dish", "small bowl"),
    "plate": ("dish plate", "flat plate"),
    "basket": ("bin", "wicker basket"),
    "wine bottle": ("bottle of wine", "wine"),
    "cabinet": ("cupboard",),
    "wooden cabinet": ("wooden cupboard", "cabinet"),
    "ramekin": ("small ramekin", "little dish"),
    "cookie box": ("box of cookies", "cookie tin"),
    "stove": ("cooktop", "burner"),
    "rack": ("wine rack", "shelf"),
}

# Verb-level substitutions for any instruction (applied one at a time).
_VERB_SWAPS = (
    (r"\bpick up\b", ("grab", "take", "lift")),
    (r"\bplace it\b", ("put it", "set it")),
    (r"^put\b", ("place", "set", "move")),
    (r"\bput\b(?! it)", ("place",)),
    (r"^open\b", ("pull open",)),
    (r"\bclose it\b", ("shut it",)),
    (r"^turn on\b", ("switch on",)),
    (r"^push\b", ("slide",)),
)


def _prepositions(prep: str) -> tuple[str, str]:
    """(in-form, into-form) of a destination preposition."""
    if prep in ("in", "into", "inside"):
        return "in", "into"
    if prep == "on top of":
        return "on top of", "on top of"
    return "on", "onto"


def _noun_variants(phrase: str) -> tuple[str, ...]:
    """Other names of a noun phrase: synonyms of the whole phrase, else of its longest known tail."""
    if phrase in _SYNONYMS:
        return _SYNONYMS[phrase]
    for known in sorted(_SYNONYMS, key=len, reverse=True):
        if phrase.endswith(" " + known):
            head = phrase[: -len(known)]
            return tuple(head + synonym for synonym in _SYNONYMS[known])
    return ()


def _frame_rewrites(obj: str, qualifier: str | None, prep: str, dest: str) -> list[Rewrite]:
    prep_in, prep_into = _prepositions(prep)
    qualified = f"{obj} {qualifier}" if qualifier else obj
    out = [Rewrite(t.format(obj=qualified, dest=dest, prep_in=prep_in, prep_into=prep_into), PHRASING)
           for t in _TEMPLATES]
    # Synonyms: each object name, and each destination name, in a handful of templates (not
    # all of them: the list would grow as templates x names without teaching more).
    for index, name in enumerate(_noun_variants(obj)):
        named = f"{name} {qualifier}" if qualifier else name
        for template in itertools.islice(itertools.cycle(_TEMPLATES), index * 5, index * 5 + 5):
            out.append(Rewrite(template.format(obj=named, dest=dest, prep_in=prep_in,
                                               prep_into=prep_into), SYNONYM))
    for index, name in enumerate(_noun_variants(dest)):
        for template in _TEMPLATES[index * 3: index * 3 + 3]:
            out.append(Rewrite(template.format(obj=qualified, dest=name, prep_in=prep_in,
                                               prep_into=prep_into), SYNONYM))
    return out


def _verb_rewrites(instruction: str) -> list[Rewrite]:
    out = []
    for pattern, replacements in _VERB_SWAPS:
        if re.search(pattern, instruction):
            out.extend(Rewrite(re.sub(pattern, r, instruction, count=1), PHRASING) for r in replacements)
    return out


@lru_cache(maxsize=None)
def rewrites(instruction: str) -> tuple[Rewrite, ...]:
    """The training rewrites of one instruction (never the instruction itself), deduplicated in
    a fixed order; empty only for an instruction no frame and no verb rule applies to."""
    text = " ".join(instruction.strip().lower().split())
    candidates: list[Rewrite] = []
    match = _PICK_PLACE.match(text)
    if match:
        candidates += _frame_rewrites(match["obj"], match["qual"], match["prep"], match["dest"])
    elif (match := _PUT.match(text)) is not None:
        candidates += _frame_rewrites(match["obj"], None, match["prep"], match["dest"])
    candidates += _verb_rewrites(text)
    seen = {text}
    unique = []
    for rewrite in candidates:
        if rewrite.text not in seen:
            seen.add(rewrite.text)
            unique.append(rewrite)
    return tuple(unique)
