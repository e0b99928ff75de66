"""Noun phrases of a prompt, for methods that encode phrases on their own (Structured Diffusion Guidance).

Parsers, chosen by name:

- ``rules`` (default, no downloads, no dependencies): a chunker written for text-to-image prompts.
- ``stanza``: the constituency parse the Structured Diffusion Guidance paper used (needs the ``stanza`` package and
  its English model already on disk; attnkit never downloads models).
- ``spacy``: noun chunks plus their post-modifiers from a dependency parse (needs ``spacy`` and
  ``en_core_web_sm``).

Every parser returns the noun phrases of more than one word, nested ones included, outer before inner and left to
right (pre-order), as character spans of the prompt; the phrase that equals the whole prompt is left out (methods
put the full prompt first themselves).

The ``rules`` grammar, in order of binding:

1. Words are determiners (a, the, two, his...), conjunctions (and, or), prepositions (on, in, with, next to, in
   front of...), verbs (finite: is, holds...; participles: sitting, wearing, covered...), or content words
   (adjectives and nouns). A base noun phrase is an optional determiner and a run of content words whose last word
   is a noun ("a red teddy bear", "school uniform", "a corgi's face"); colour adjectives may be coordinated inside it
   ("a black and white photo"). A run ending in an adjective ("highly detailed") is not a noun phrase.
2. ``X of Y`` binds first ("a cup of coffee"), except after picture nouns (photo, painting, portrait...), where Y
   is a whole phrase with its own modifiers ("a photo of [an astronaut riding a horse]").
3. A prepositional phrase after a noun phrase makes a larger noun phrase, attaching to the nearest noun ("a desk
   near a window" inside "a laptop on a desk near a window").
4. A participle ("sitting on", "wearing") attaches to the outermost phrase before it ("a woman in a red dress
   holding a cat"); place phrases after its object belong to the verb ("an astronaut riding a horse on the moon"
   has no phrase "a horse on the moon").
5. ``and``/``or`` coordinate noun phrases into a larger one. Inside a modifier ("with a sandwich and a cup of
   coffee") the coordination stays inside unless the next conjunct carries its own modifier ("a man wearing a hat
   and a woman holding an umbrella" coordinates the two people).
6. Commas, semicolons and full stops separate phrases (tag lists); they never join them. A finite verb ends a
   phrase ("a dog chases a ball" has "a dog" and "a ball").
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field

from ..errors import AttnKitError

PARSERS = ("rules", "stanza", "spacy")


@dataclass(frozen=True)
class Phrase:
    """A phrase of the prompt: its text as written and its ``[start, end)`` character span."""

    text: str
    start: int
    end: int


# ------------------------------------------------------------------------------------------------- lexicon

_DETERMINERS = set(
    "a an the this that these those some any each every another no his her its their my our your both all "
    "many several few one two three four five six seven eight nine ten eleven twelve dozen".split()
)
_PRONOUNS = set("it them him me us you they he she we i".split())
_CONJUNCTIONS = {"and", "or", "nor", "&"}
_PREPOSITIONS = set(
    "on in under over above below behind beside besides near inside outside atop with without at by of from into "
    "onto through across along against among amongst around between beneath underneath within toward towards past "
    "upon via amid throughout beyond during down up off".split()
)
#: prepositions of place that a constituency parse attaches to the nearest noun ("a horse on the moon"); motion
#: prepositions after a participle's object ("riding a bike down a street") stay with the verb
_LOCATIVE = frozenset("on in at near under beside behind above below inside atop beneath underneath".split()) | {
    "in front of", "on top of", "next to", "close to", "in between"}
_MULTI_PREPOSITIONS = [("in", "front", "of"), ("on", "top", "of"), ("next", "to"), ("close", "to"),
                       ("far", "from"), ("out", "of"), ("in", "between")]
_FINITE_VERBS = set(
    "is are was were be been am has have had does do sits stands holds wears rides eats plays chases jumps runs "
    "flies lies looks reads drinks walks sleeps swims carries hugs kisses watches faces leans hangs grows floats "
    "stares shows contains covers surrounds sit stand hold wear ride eat play chase jump run fly lie look read drink "
    "walk sleep swim carry hug kiss watch lean hang grow float stare show contain cover surround".split()
)
# -ing words that are nouns, not participles.
_NOUN_ING = set(
    "painting drawing building ring king wing string ceiling clothing evening morning spring swing thing sling "
    "pudding wedding earring lightning stuffing frosting icing railing landing sibling duckling dumpling bedding "
    "awning lining offering lighting sketching engraving carving ceiling wellbeing viking ping".split()
)
# -ed words that are nouns.
_NOUN_ED = set("bed shed sled red seed weed steed reed speed breed tweed need feed hundred".split())
# Heads that make a run an adjective phrase rather than a noun phrase (beyond -ly/-ed endings).
_ADJECTIVES = set(
    "red orange yellow green blue purple violet pink brown black white gray grey golden silver beige teal cyan "
    "magenta turquoise dark bright pale colorful colourful realistic photorealistic hyperrealistic "
    "beautiful cinematic dramatic vibrant intricate sharp soft detailed cute small large big tall tiny huge old "
    "young new wooden metallic shiny glossy matte epic moody dreamy ethereal".split()
)
_PICTURE_NOUNS = set(
    "photo photograph picture painting drawing portrait image illustration sketch render rendering closeup "
    "close-up shot poster watercolor watercolour print still snapshot selfie cartoon".split()
)
_UNIT = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[^\w\s]", re.UNICODE)
_SEPARATORS = set(",;.!?:|()[]{}")


# ------------------------------------------------------------------------------------------------- the chunker


@dataclass
class _Unit:
    text: str
    start: int
    end: int
    kind: str = "content"  # det, pron, conj, prep, fin, part, sep, content

    @property
    def low(self) -> str:
        return self.text.lower()


@dataclass
class _Item:
    """A base noun phrase (``np``), an adjective run (``adj``) or a single function unit."""

    kind: str
    start: int
    end: int
    words: int = 1
    head: str = ""
    text: str = ""


@dataclass
class _Node:
    start: int
    end: int
    children: list["_Node"] = field(default_factory=list)
    words: int = 1
    head: str = ""
    verbal: bool = False  # a node extended by a participle: later place phrases extend it, not wrap it

    def preorder(self):
        yield self
        for child in self.children:
            yield from child.preorder()


def _units(prompt: str) -> list[_Unit]:
    units = [_Unit(m.group(0), m.start(), m.end()) for m in _UNIT.finditer(prompt)]
    merged: list[_Unit] = []
    i = 0
    while i < len(units):
        for pattern in _MULTI_PREPOSITIONS:
            n = len(pattern)
            if tuple(u.low for u in units[i : i + n]) == pattern:
                merged.append(_Unit(" ".join(u.text for u in units[i : i + n]), units[i].start, units[i + n - 1].end,
                                    "prep"))
                i += n
                break
        else:
            merged.append(units[i])
            i += 1
    return merged


def _is_noun_like(word: str) -> bool:
    low = word.lower()
    if low in _ADJECTIVES or low.endswith("ly"):
        return False
    if low.endswith("ed") and len(low) > 4 and low not in _NOUN_ED:
        return False
    return True


def _classify(units: list[_Unit]) -> None:
    for i, u in enumerate(units):
        low = u.low
        if u.kind == "prep":
            continue
        if low in _SEPARATORS:
            u.kind = "sep"
        elif low in _CONJUNCTIONS:
            u.kind = "conj"
        elif low in _DETERMINERS or low.isdigit():
            u.kind = "det"
        elif low in _PRONOUNS:
            u.kind = "pron"
        elif low in _PREPOSITIONS:
            u.kind = "prep"
        elif low in _FINITE_VERBS:
            u.kind = "fin"
    for i, u in enumerate(units):  # participles need their neighbours' kinds
        if u.kind != "content":
            continue
        low = u.low
        prev = units[i - 1] if i > 0 else None
        nxt = units[i + 1] if i + 1 < len(units) else None
        after_noun = prev is not None and prev.kind == "content"
        before_object = nxt is not None and nxt.kind in ("prep", "det", "pron")
        if low.endswith("ing") and len(low) > 4 and low not in _NOUN_ING and (after_noun or before_object):
            u.kind = "part"
        elif low.endswith("ed") and len(low) > 4 and low not in _NOUN_ED and before_object:
            u.kind = "part"


def _items(units: list[_Unit]) -> list[_Item]:
    items: list[_Item] = []
    chunk: list[_Unit] = []

    def close():
        if not chunk:
            return
        content = [u for u in chunk if u.kind == "content"]
        if content and _is_noun_like(content[-1].text):
            words = sum(1 for u in chunk if u.kind != "conj")
            items.append(_Item("np", chunk[0].start, chunk[-1].end, words, content[-1].low))
        elif not content and all(u.kind == "det" for u in chunk) and len(chunk) == 1 and chunk[0].low.isdigit():
            items.append(_Item("np", chunk[0].start, chunk[-1].end, 1, chunk[0].low))
        else:
            items.append(_Item("adj", chunk[0].start, chunk[-1].end))
        chunk.clear()

    for i, u in enumerate(units):
        nxt = units[i + 1] if i + 1 < len(units) else None
        if u.kind == "det":
            if any(c.kind == "content" for c in chunk):
                close()
            chunk.append(u)
        elif u.kind == "content":
            chunk.append(u)
        elif (u.kind == "conj" and chunk and chunk[-1].kind == "content" and chunk[-1].low in _ADJECTIVES
              and nxt is not None and nxt.kind == "content" and nxt.low in _ADJECTIVES):
            chunk.append(u)  # "black and white photo": coordinated colour adjectives inside one phrase
        else:
            close()
            if u.kind == "pron":
                items.append(_Item("np", u.start, u.end, 1, u.low))
            else:
                items.append(_Item(u.kind, u.start, u.end, text=u.low))
    close()
    return items


class _Parser:
    """Recursive descent over the items of one segment (between separators)."""

    def __init__(self, items: list[_Item]):
        self.items = items

    def kind(self, pos: int) -> str:
        return self.items[pos].kind if 0 <= pos < len(self.items) else "end"

    def text(self, pos: int) -> str:
        return self.items[pos].text if 0 <= pos < len(self.items) else ""

    def base(self, pos: int) -> _Node:
        it = self.items[pos]
        return _Node(it.start, it.end, words=it.words, head=it.head)

    def unit(self, pos: int) -> tuple[_Node, int]:
        """A base phrase with its tight ``of`` complements ("a cup of coffee")."""
        node = self.base(pos)
        pos += 1
        while self.text(pos) == "of" and self.kind(pos + 1) == "np" and node.head not in _PICTURE_NOUNS:
            obj = self.base(pos + 1)
            node = _Node(node.start, obj.end, [node, obj], node.words + 1 + obj.words, node.head)
            pos += 2
        return node, pos

    def phrase(self, pos: int, participles: bool, places: bool) -> tuple[_Node, int]:
        """A noun phrase with its modifiers. ``participles``/``places``: whether those may attach here."""
        node, pos = self.unit(pos)
        if node.head in _PICTURE_NOUNS and self.text(pos) == "of" and self.kind(pos + 1) == "np":
            obj, pos = self.coordination(pos + 1)
            return _Node(node.start, obj.end, [node, obj], node.words + 1 + obj.words, node.head), pos
        while True:
            kind = self.kind(pos)
            word = self.text(pos)
            allowed = places is True or (bool(places) and word in places) or word in ("of", "with")
            if kind == "prep" and self.kind(pos + 1) == "np" and allowed:
                obj, end = self.object(pos + 1, participles=False, places=places)
                if node.verbal:  # a place phrase after a participle's object belongs to the verb
                    node = _Node(node.start, obj.end, node.children + [obj], node.words + 1 + obj.words, node.head,
                                 verbal=True)
                else:
                    node = _Node(node.start, obj.end, [node, obj], node.words + 1 + obj.words, node.head)
                pos = end
            elif kind == "part" and participles:
                k = pos + 1
                if self.kind(k) == "prep":
                    k += 1
                if self.kind(k) == "np":  # its object takes its own locative phrases, as a constituency parse does
                    obj, end = self.object(k, participles=False, places=_LOCATIVE)
                    node = _Node(node.start, obj.end, [node, obj], node.words + 2 + obj.words, node.head, verbal=True)
                    pos = end
                else:
                    last = self.items[k - 1]
                    node = _Node(node.start, last.end, [node], node.words + k - pos, node.head, verbal=True)
                    pos = k
            else:
                return node, pos

    def object(self, pos: int, participles: bool, places: bool) -> tuple[_Node, int]:
        """The object of a preposition or participle, coordinated inside unless the next conjunct has modifiers."""
        node, pos = self.phrase(pos, participles, places)
        parts = [node]
        while self.kind(pos) == "conj" and self.kind(pos + 1) == "np":
            _, after = self.unit(pos + 1)
            if self.kind(after) in ("prep", "part"):
                break  # parallel structure: "a man wearing a hat and a woman holding ..." -> coordinate higher up
            node, pos = self.phrase(pos + 1, participles, places)
            parts.append(node)
        return self._join(parts), pos

    def coordination(self, pos: int) -> tuple[_Node, int]:
        node, pos = self.phrase(pos, participles=True, places=True)
        parts = [node]
        while self.kind(pos) == "conj" and self.kind(pos + 1) == "np":
            node, pos = self.phrase(pos + 1, participles=True, places=True)
            parts.append(node)
        return self._join(parts), pos

    @staticmethod
    def _join(parts: list[_Node]) -> _Node:
        if len(parts) == 1:
            return parts[0]
        return _Node(parts[0].start, parts[-1].end, parts, sum(p.words for p in parts) + len(parts) - 1)

    def parse(self) -> list[_Node]:
        nodes, pos = [], 0
        while pos < len(self.items):
            if self.kind(pos) == "np":
                node, pos = self.coordination(pos)
                nodes.append(node)
            else:
                pos += 1
        return nodes


def _rules(prompt: str) -> list[tuple[int, int]]:
    units = _units(prompt)
    _classify(units)
    spans: list[tuple[int, int]] = []
    segment: list[_Unit] = []
    for u in units + [_Unit(",", len(prompt), len(prompt), "sep")]:
        if u.kind == "sep":
            for root in _Parser(_items(segment)).parse():
                spans.extend((n.start, n.end) for n in root.preorder() if n.words > 1)
            segment = []
        else:
            segment.append(u)
    return spans


# ------------------------------------------------------------------------------------------ optional parsers


def _require(package: str, how: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise AttnKitError(f"parser={package!r} needs the {package} package and its English model: {how}. "
                           "attnkit never downloads models. Or choose the rules parser, or type the phrases yourself")


def _stanza(prompt: str) -> list[tuple[int, int]]:
    _require("stanza", "pip install stanza, then python -c \"import stanza; stanza.download('en')\"")
    import stanza

    try:
        nlp = stanza.Pipeline(lang="en", processors="tokenize,pos,constituency", download_method=None,
                              verbose=False)
    except Exception as exc:
        raise AttnKitError(f"parser='stanza' could not load its English model ({exc}); install it with "
                           "python -c \"import stanza; stanza.download('en')\"") from exc
    doc = nlp(prompt)
    spans = []
    for sentence in doc.sentences:
        words = [(w.start_char, w.end_char) for w in sentence.words]
        spans.extend(constituency_spans(sentence.constituency, words))
    return spans


def constituency_spans(tree, word_chars: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of every ``NP`` node with more than one leaf, in pre-order.

    Args:
        tree: a constituency tree whose nodes have ``label`` and ``children`` (leaves have no children), as
            stanza's ``sentence.constituency``.
        word_chars: ``(start, end)`` characters of each leaf, in order.
    """
    spans: list[tuple[int, int]] = []
    counter = [0]

    def walk(node) -> tuple[int, int]:
        if not node.children:
            index = counter[0]
            counter[0] += 1
            return index, index + 1
        first = None
        last = None
        record = len(spans)
        if node.label == "NP":
            spans.append((-1, -1))  # placeholder keeps pre-order; filled after the children are walked
        for child in node.children:
            lo, hi = walk(child)
            first = lo if first is None else first
            last = hi
        if node.label == "NP":
            spans[record] = (word_chars[first][0], word_chars[last - 1][1]) if last - first > 1 else (-1, -1)
        return first, last

    walk(tree)
    return [s for s in spans if s != (-1, -1)]


def _spacy(prompt: str) -> list[tuple[int, int]]:
    _require("spacy", "pip install spacy, then python -m spacy download en_core_web_sm")
    import spacy

    try:
        nlp = spacy.load("en_core_web_sm")
    except Exception as exc:
        raise AttnKitError(f"parser='spacy' could not load en_core_web_sm ({exc}); install it with "
                           "python -m spacy download en_core_web_sm") from exc
    doc = nlp(prompt)
    spans = []
    for token in doc:
        if token.pos_ in ("NOUN", "PROPN"):
            subtree = doc[token.left_edge.i : token.right_edge.i + 1]
            chunk = next((c for c in doc.noun_chunks if c.root.i == token.i), None)
            for span in (subtree, chunk):
                if span is not None and len(span) > 1:
                    spans.append((span.start_char, span.end_char))
    return spans


# ------------------------------------------------------------------------------------------------------ API


def noun_phrases(prompt: str, parser: str = "rules") -> list[Phrase]:
    """The prompt's noun phrases of more than one word, outer before inner, left to right.

    Args:
        prompt: the prompt.
        parser: ``"rules"`` (default), ``"stanza"`` or ``"spacy"``.

    Returns:
        :class:`Phrase` objects (text as written, character span), without duplicates and without the phrase that
        spans the whole prompt. Trailing full stops and surrounding spaces do not count.
    """
    if parser not in PARSERS:
        raise AttnKitError(f"unknown parser {parser!r}; use one of {', '.join(PARSERS)} (or explicit phrases=[...])")
    spans = {"rules": _rules, "stanza": _stanza, "spacy": _spacy}[parser](prompt)
    core = prompt.strip().rstrip(".").strip()
    whole_start = prompt.find(core) if core else 0
    whole = (whole_start, whole_start + len(core))
    seen, phrases = set(), []
    for start, end in spans:
        if (start, end) == whole or (start, end) in seen or end <= start:
            continue
        seen.add((start, end))
        phrases.append(Phrase(prompt[start:end], start, end))
    return phrases


def nouns(prompt: str) -> list[Phrase]:
    """Every noun of the prompt, as a part-of-speech tagger's ``NN*`` tags find them (what DPL's official code lets own
    a background cluster): the content words of the ``rules`` lexicon that are not adjectives or participles, head
    nouns and noun modifiers alike ("school" and "bus" in "a school bus"), left to right."""
    units = _units(prompt)
    _classify(units)
    return [Phrase(u.text, u.start, u.end) for u in units
            if u.kind == "content" and _is_noun_like(u.text) and any(c.isalpha() for c in u.text)]
