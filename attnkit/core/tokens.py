"""Words and phrases of a prompt -> token positions, for every tokenizer a model has.

Methods are driven by words the user picks ("car", "red car"). This module finds where those words sit in the token
sequence that the pipeline actually encodes and the denoiser attends to:

- SD 1.x/2.x: the CLIP sequence (position 0 is BOS, so the first word is at 1; 77 positions).
- SDXL: both CLIP encoders' sequences (they share positions; their features are concatenated per position).
- Flux: the T5 sequence (no BOS; ``max_sequence_length`` positions). The CLIP encoder only gives a pooled vector.

A word is matched case-insensitively on whole words; a phrase matches consecutive words and covers every token
between its first and last character (multi-piece words, inner punctuation). ``"dog#2"`` picks the second "dog" of
the prompt; a plain word that occurs several times means all its occurrences. A word that is not in the prompt, or
that the pipeline truncates away, raises an error that names it and lists the prompt's words.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ..errors import AttnKitError, WordCutOffError, WordNotFoundError

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
_OCCURRENCE = re.compile(r"^(?P<text>.*?)#(?P<n>[0-9]+)$")


@dataclass(frozen=True)
class Word:
    """One word of the prompt: its text, character span and the token positions it covers."""

    text: str
    start: int
    end: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class WordSpan:
    """Where a requested word or phrase sits in an encoded sequence.

    Attributes:
        query: the word/phrase as the user wrote it (``"red car"``, ``"dog#2"``).
        positions: sorted token positions of every selected occurrence.
        occurrences: the positions of each selected occurrence separately.
        chars: the ``(start, end)`` character span of each selected occurrence in the prompt.
    """

    query: str
    positions: tuple[int, ...]
    occurrences: tuple[tuple[int, ...], ...]
    chars: tuple[tuple[int, int], ...] = ()


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words of ``text`` as ``(word, start, end)``: runs of letters/digits, inner apostrophes kept."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]


def encode_with_offsets(tokenizer, prompt: str, name: str = "tokenizer"):
    """``(ids, offsets, special mask)`` of ``prompt`` as ``tokenizer`` encodes it (specials included, not truncated).

    Fast tokenizers report each token's ``(start, end)`` characters themselves. Slow (Python) tokenizers cannot
    (``return_offsets_mapping`` raises ``NotImplementedError``), and they are what hosts hand out: ComfyUI's CLIP
    and A1111's/Forge's under transformers 4.x. For those, the prompt is cut into the pieces the tokenizer's own
    pre-tokenizer cuts it into (CLIP's ``pat``; whitespace-separated chunks otherwise), each piece is tokenized alone
    and its tokens get its character span; the result is accepted only if the pieces' tokens are exactly the
    prompt's tokens, so a position is never guessed.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True, truncation=False)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], list(enc["special_tokens_mask"])
    enc = tokenizer(prompt, add_special_tokens=True, return_special_tokens_mask=True, truncation=False)
    ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    pattern = getattr(tokenizer, "pat", None)
    lowered = prompt.lower() if getattr(tokenizer, "do_lower_case", True) is not False else prompt
    if pattern is None or not hasattr(pattern, "finditer") or len(lowered) != len(prompt):
        pattern = re.compile(r"\S+")
    pieces: list[tuple[int, int, int]] = []
    for m in pattern.finditer(lowered):
        piece_ids = tokenizer(prompt[m.start():m.end()], add_special_tokens=False)["input_ids"]
        pieces.extend((i, m.start(), m.end()) for i in piece_ids)
    content = [i for i, s in zip(ids, special) if not s]
    if [p[0] for p in pieces] != content:
        raise AttnKitError(
            f"cannot tell which characters each token of {name} ({type(tokenizer).__name__}, a slow tokenizer) comes "
            f"from in {prompt!r}; use a fast tokenizer or simplify the prompt's punctuation"
        )
    spans = iter(pieces)
    offsets = [(0, 0) if s else next(spans)[1:] for s in special]
    return ids, offsets, special


class TokenMap:
    """Token positions of one prompt as one tokenizer encodes it for the pipeline.

    Args:
        prompt: the prompt exactly as passed to the pipeline.
        tokenizer: a ``transformers`` tokenizer (CLIP BPE or T5 SentencePiece; fast or slow).
        max_length: how many positions the pipeline keeps (77 for CLIP, ``max_sequence_length`` for T5).
        name: label used in messages (``"tokenizer_2"``...).
    """

    def __init__(self, prompt: str, tokenizer, max_length: int | None = None, name: str = "tokenizer"):
        if not isinstance(prompt, str):
            raise AttnKitError(f"prompt must be a string, got {type(prompt).__name__}")
        self.prompt = prompt
        self.name = name
        self.max_length = int(max_length or tokenizer.model_max_length)
        ids, self.offsets, self.special = encode_with_offsets(tokenizer, prompt, name)
        self.ids = ids
        self.tokens = tokenizer.convert_ids_to_tokens(ids)
        # The pipeline keeps the first max_length tokens and re-appends EOS, so content positions go up to
        # max_length - 2 when the sequence ends with a special token (CLIP BOS..EOS, T5 ..</s>).
        trailing_special = bool(self.special) and self.special[-1] == 1
        self.last_kept = self.max_length - (2 if trailing_special else 1)
        self.words = [
            Word(text, start, end, self._positions_for_chars(start, end)) for text, start, end in split_words(prompt)
        ]

    def _positions_for_chars(self, start: int, end: int) -> tuple[int, ...]:
        return tuple(
            i
            for i, ((a, b), special) in enumerate(zip(self.offsets, self.special))
            if not special and a < end and b > start
        )

    @property
    def length(self) -> int:
        """Number of tokens the full prompt has, specials included (before truncation)."""
        return len(self.ids)

    def word_list(self) -> list[str]:
        """The prompt's words in order, as a user would pick them."""
        return [w.text for w in self.words]

    def _not_found(self, query: str, reason: str = "is not in the prompt") -> WordNotFoundError:
        words = self.word_list()
        close = difflib.get_close_matches(query.lower(), [w.lower() for w in words], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return WordNotFoundError(
            f"{query!r} {reason} {self.prompt!r}; its words are: {', '.join(words) or '(none)'}.{hint}"
        )

    def find(self, query: str) -> WordSpan:
        """Token positions of a word or phrase (``"car"``, ``"red car"``, ``"dog#2"``).

        Raises:
            WordNotFoundError: the word is not in the prompt, or the ``#n`` occurrence does not exist.
            AttnKitError: the word lies beyond what the pipeline encodes (prompt longer than the tokenizer keeps).
        """
        if not isinstance(query, str) or not query.strip():
            raise AttnKitError(f"words must be non-empty strings, got {query!r}")
        text, which = query.strip(), None
        m = _OCCURRENCE.match(text)
        if m:
            text, digits = m.group("text").strip(), m.group("n")
            if len(digits) > 3:  # a 77-token prompt holds no word 1000 times
                raise AttnKitError(f"{query[:40]!r}...: the occurrence number after '#' is too large (at most 999)")
            which = int(digits)
            if which < 1:
                raise AttnKitError(f"{query!r}: occurrences count from 1 (write {text}#1 for the first)")
        wanted = [w.lower() for w, _, _ in split_words(text)]
        if not wanted:
            raise AttnKitError(f"{query!r} has no letters or digits to look for in the prompt")
        have = [w.text.lower() for w in self.words]
        n = len(wanted)
        found = [i for i in range(len(have) - n + 1) if have[i : i + n] == wanted]
        if not found:
            raise self._not_found(text)
        if which is not None:
            if which > len(found):
                raise self._not_found(query, f"asks for occurrence {which} but {text!r} occurs {len(found)} time(s) in")
            found = [found[which - 1]]
        occurrences, chars = [], []
        for i in found:
            first, last = self.words[i], self.words[i + n - 1]
            positions = self._positions_for_chars(first.start, last.end)
            if not positions:
                raise self._not_found(text, "produces no tokens in")
            if positions[-1] > self.last_kept:
                raise WordCutOffError(
                    f"{query!r} is at token {positions[-1]} of {self.name}, but the pipeline keeps only the first "
                    f"{self.last_kept} tokens of the prompt ({self.length} tokens); the rest is cut off. Shorten the "
                    "prompt or move the word earlier."
                )
            occurrences.append(positions)
            chars.append((first.start, last.end))
        positions = tuple(sorted({p for occ in occurrences for p in occ}))
        return WordSpan(query, positions, tuple(occurrences), tuple(chars))

    def positions_of_chars(self, start: int, end: int) -> tuple[int, ...]:
        """Token positions covering the characters ``[start, end)`` of the prompt (specials excluded)."""
        return self._positions_for_chars(start, end)


@dataclass
class PromptTokens:
    """Token maps of one prompt for every tokenizer of a pipeline, and which one the attention keys follow.

    Attributes:
        maps: ``{"tokenizer": TokenMap, "tokenizer_2": TokenMap, ...}``.
        key: the tokenizer whose positions are the attention keys' positions.
        num_keys: length of the text sequence the denoiser attends to.
    """

    maps: dict[str, TokenMap]
    key: str
    num_keys: int

    @property
    def attention(self) -> TokenMap:
        """The token map whose positions index the attention keys."""
        return self.maps[self.key]

    def find(self, query: str) -> WordSpan:
        """Positions of ``query`` in the attention sequence, checked against every other tokenizer."""
        span = self.attention.find(query)
        for name, tmap in self.maps.items():
            if name != self.key and tmap.max_length == self.attention.max_length and tmap.find(query).positions != span.positions:
                raise AttnKitError(
                    f"{query!r} sits at different positions for {self.key} and {name}; attnkit cannot target it "
                    "consistently with these tokenizers"
                )
        return span

    def words(self) -> list[str]:
        return self.attention.word_list()


def prompt_tokens(pipe, prompt: str, family: str, max_sequence_length: int | None = None) -> PromptTokens:
    """Build the :class:`PromptTokens` of ``prompt`` for ``pipe``'s tokenizers.

    Args:
        family: ``"sd"``, ``"sdxl"`` or ``"flux"`` (see :func:`attnkit.models.family_of`).
        max_sequence_length: Flux's T5 length as passed to the pipeline (default 512).
    """
    if family == "flux":
        length = int(max_sequence_length or 512)
        maps = {
            "tokenizer": TokenMap(prompt, pipe.tokenizer, name="tokenizer"),
            "tokenizer_2": TokenMap(prompt, pipe.tokenizer_2, max_length=length, name="tokenizer_2 (T5)"),
        }
        return PromptTokens(maps, "tokenizer_2", length)
    maps = {}
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            maps[name] = TokenMap(prompt, tok, name=name)
    if not maps:
        raise AttnKitError("this pipeline has no tokenizer; attnkit needs it to find words in the prompt")
    key = "tokenizer" if "tokenizer" in maps else "tokenizer_2"
    return PromptTokens(maps, key, maps[key].max_length)
