"""``structured``: Structured Diffusion Guidance.

Feng et al., "Training-Free Structured Diffusion Guidance for Compositional Text-to-Image Synthesis", ICLR 2023,
https://arxiv.org/abs/2212.05032 (official code: weixi-feng/Structured-Diffusion-Guidance).

Each noun phrase of the prompt is encoded on its own, so its tokens are not contaminated by the rest of the
sentence ("a red car and a white sheep": "white" no longer leaks into "car"). Its token embeddings are spliced into
the full prompt's sequence at the phrase's positions (BOS, EOS and padding stay from the full prompt), giving one
aligned sequence per phrase, ``W~_1..W~_k``; ``W~_0`` is the full prompt ``W_0``. Then, in every cross-attention
layer, at every step, for the conditional half of CFG only:

- default mode (one key, many values): keys from ``W_0``, ``M = softmax(Q K^T / sqrt(d))``, output
  ``(1/(k+1)) sum_i M to_v(W~_i)``. Because ``to_v`` is affine, this equals ``M to_v(mean_i W~_i)`` exactly: values
  come from the mean of the aligned sequences, so the layer runs once on the fast attention path.
- conjunction mode (many keys, one value): ``(1/(k+1)) sum_i softmax(Q to_k(K_i)^T / sqrt(d)) to_v(W~_all)``, with
  ``K_i = W~_i`` for the phrases and ``W~_all`` the prompt with every phrase substituted in turn (inner phrases
  last, so they win). The first key ``K_0`` is ``W~_all`` as the official code computes it (its substitution writes
  into the tensor used as the first key; ``conjunction_first_key="official"``) or the raw prompt ``W_0`` as the
  paper describes (``"prompt"``).

Phrase embeddings are applied as differences to the embeddings the pipeline actually passes (``W_0 + (W~_i - W_0)``),
so prompt weighting done by a host still holds; if those embeddings differ from attnkit's own encoding of the prompt,
the report says so. Supports SD 1.x/2.x and SDXL (each text encoder's features aligned with its own tokenizer; the
pooled embedding is untouched). A prompt with no phrase of more than one word leaves the pipeline untouched and warns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.phrases import PARSERS, Phrase, noun_phrases
from ..core.steps import check_window
from ..errors import AttnKitError
from .base import Controller, Method
from .fields import Field

MAX_PHRASES = 32  # [ours] a bound on extra text encodings and conjunction keys for shared presets


@dataclass
class StructuredConfig:
    """Settings of ``structured``.

    Attributes:
        parser: how noun phrases are found: ``"rules"`` (default, no downloads), ``"stanza"`` (the paper's
            constituency parser) or ``"spacy"``; the last two need their package and English model installed.
        phrases: explicit phrases of the prompt to use instead of a parser (``["a red car", "a white sheep"]``),
            spelled as in the prompt; ``"word#2"`` picks a later occurrence.
        conjunction: conjunction mode (many keys, one value) instead of the default (one key, many values).
        conjunction_first_key: ``"official"``: the first key is the all-substituted sequence, as the official code
            computes it; ``"prompt"``: the raw prompt, as the paper intends.
        steps: progress window ``(start, stop)`` in which it acts [ours]; the paper acts at every step (default).
        lowercase: the parser reads the prompt lowercased, as the official code prepares it (default); the phrases
            keep the prompt's own characters. The CLIP encodings do not change (CLIP lowercases); what a parser
            finds can (Stanza and spaCy read capitals as proper nouns; the rules parser ignores case).
    """

    parser: str = "rules"
    phrases: list[str] | None = None
    conjunction: bool = False
    conjunction_first_key: str = "official"
    steps: tuple[float, float] = (0.0, 1.0)
    lowercase: bool = True

    def __post_init__(self):
        if self.parser not in PARSERS:
            raise AttnKitError(f"structured: unknown parser {self.parser!r}; use one of {', '.join(PARSERS)}")
        if self.phrases is not None:
            if isinstance(self.phrases, str):
                self.phrases = [p.strip() for p in self.phrases.split(",") if p.strip()]
            self.phrases = list(self.phrases)
            if not all(isinstance(p, str) and p.strip() for p in self.phrases):
                raise AttnKitError(f"structured: phrases must be non-empty strings, got {self.phrases!r}")
            if len(self.phrases) > MAX_PHRASES:
                raise AttnKitError(f"structured: at most {MAX_PHRASES} phrases, got {len(self.phrases)}")
        if not isinstance(self.lowercase, bool):
            raise AttnKitError(f"structured: lowercase must be true or false, got {self.lowercase!r}")
        if not isinstance(self.conjunction, bool):
            raise AttnKitError(f"structured: conjunction must be true or false, got {self.conjunction!r}")
        if self.conjunction_first_key not in ("official", "prompt"):
            raise AttnKitError(
                f"structured: conjunction_first_key={self.conjunction_first_key!r}; use 'official' or 'prompt'"
            )
        self.steps = check_window(self.steps, "structured: steps")


class StructuredController(Controller):
    """Phrases, their aligned sequences and the per-layer attention rule for one run.

    Attributes:
        phrases: the phrases used, outer before inner.
        sequences: ``[W_0, W~_1, ..., W~_k]``, each ``(1, T, C_text)``.
        substituted: ``W~_all``.
    """

    def __init__(self, method, run):
        super().__init__(method, run)
        tokens = run.tokens
        self.phrases = self._phrases(run.prompt, tokens)
        self.sequences: list[torch.Tensor] = []
        self._checked = False
        if not self.phrases:
            self.report.warnings.append(
                f"no phrase of more than one word in {run.prompt!r}; structured changed nothing "
                "(give phrases=[...] to choose them)"
            )
            self.report.data.update(phrases=[], mode=self._mode())
            return
        with torch.no_grad():
            w0 = run.encode_text(run.prompt)
            self.sequences = [w0]
            substituted = w0.clone()
            spans = []
            for phrase in self.phrases:
                own = run.encode_text(phrase.text)
                aligned = w0.clone()
                span = {}
                for name, tokenizer, features in run.text_encoders():
                    tmap = tokens.maps[name]
                    positions = tmap.positions_of_chars(phrase.start, phrase.end)
                    count = len(pipe_tokens(tokenizer, phrase.text))
                    if count != len(positions):
                        raise AttnKitError(
                            f"structured: {phrase.text!r} is {count} tokens alone but {len(positions)} inside the "
                            f"prompt ({name}); rephrase it or give phrases=[...]"
                        )
                    s, e = positions[0], positions[-1] + 1
                    aligned[:, s:e, features] = own[:, 1 : 1 + count, features]
                    substituted[:, s:e, features] = own[:, 1 : 1 + count, features]
                    span[name] = [s, e]
                self.sequences.append(aligned)
                spans.append({"text": phrase.text, "chars": [phrase.start, phrase.end], "tokens": span})
            self.substituted = substituted
            k = len(self.phrases)
            #: default mode: values = W_0 + value_offset (the mean of the k+1 aligned sequences)
            self.value_offset = (torch.stack(self.sequences).mean(dim=0) - w0)
            first = substituted - w0 if self.config.conjunction_first_key == "official" else torch.zeros_like(w0)
            #: conjunction mode: keys W_0 + key_offsets[i], value W_0 + conj_value_offset
            self.key_offsets = torch.cat([first] + [seq - w0 for seq in self.sequences[1:]], dim=0)
            self.conj_value_offset = substituted - w0
        self.report.data.update(phrases=spans, mode=self._mode(), k=k)

    def _mode(self) -> str:
        return "conjunction" if self.config.conjunction else "default"

    def _phrases(self, prompt: str, tokens) -> list[Phrase]:
        key = tokens.attention
        if self.config.phrases is not None:
            phrases = []
            for query in self.config.phrases:
                span = key.find(query)
                for start, end in span.chars:
                    phrases.append(Phrase(prompt[start:end], start, end))
        else:
            text = "".join(c.lower() if len(c.lower()) == 1 else c for c in prompt) if self.config.lowercase else prompt
            phrases = [Phrase(prompt[p.start:p.end], p.start, p.end) for p in noun_phrases(text, self.config.parser)]
        kept = []
        for phrase in phrases:
            positions = key.positions_of_chars(phrase.start, phrase.end)
            if positions and positions[-1] > key.last_kept:
                self.report.warnings.append(
                    f"phrase {phrase.text!r} is past the {key.last_kept} tokens the pipeline keeps; skipped"
                )
                continue
            if phrase not in kept:
                kept.append(phrase)
        if len(kept) > MAX_PHRASES:
            self.report.warnings.append(f"{len(kept)} phrases found; using the first {MAX_PHRASES}")
            kept = kept[:MAX_PHRASES]
        return kept

    def bind(self, layers, latent_hw):
        if not self.phrases:
            return
        self.text_layers = frozenset(layer.index for layer in layers if layer.kind == "cross")
        self.report.data["layers"] = len(self.text_layers)

    def wants_step(self, step):
        return step.within(self.config.steps)

    def _check_prompt(self, text: torch.Tensor, rows) -> None:
        """Once per run: do the runtime's prompt embeddings match attnkit's own encoding of the prompt?"""
        self._checked = True
        w0 = self.sequences[0]
        n = min(w0.shape[1], text.shape[1])
        first = rows.start if isinstance(rows, slice) else int(rows[0])
        if w0.shape[-1] == text.shape[-1] and not torch.allclose(
                text[first:first + 1, :n].float(), w0[:, :n].to(text.device).float(), atol=1e-3, rtol=1e-3):
            self.report.warnings.append(
                "the prompt embeddings differ from attnkit's encoding of the prompt (prompt weighting, "
                "clip_skip, prompt_2?); phrase embeddings were applied as differences to them"
            )

    def edit_text(self, layer, step, keys, values, rows):
        """Default mode: keys from the prompt, values from the mean of the aligned sequences. Conjunction mode: one
        key text per sequence (the first as ``conjunction_first_key`` says), values from ``W~_all``. Applied as
        differences to the runtime's own text, on the conditional rows (padded or cut to its length: a host's
        longer prompt keeps its later chunks)."""
        if not self._checked:
            self._check_prompt(keys, rows)

        def fit(offset):  # (g, T0, C) -> (g, T, C)
            offset = offset.to(keys.device, keys.dtype)
            t = keys.shape[1]
            if t == offset.shape[1]:
                return offset
            if t < offset.shape[1]:
                return offset[:, :t]
            return torch.cat([offset, offset.new_zeros(offset.shape[0], t - offset.shape[1], offset.shape[2])], 1)

        if not self.config.conjunction:
            values = values.clone()
            values[rows] += fit(self.value_offset)
            return [keys], values
        groups = []
        for offset in fit(self.key_offsets):
            group = keys.clone()
            group[rows] += offset
            groups.append(group)
        values = values.clone()
        values[rows] += fit(self.conj_value_offset)
        return groups, values

    def finish(self):
        self.report.data["steps"] = self.run.report.steps


def pipe_tokens(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` alone, without BOS/EOS."""
    ids = tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
    mask = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    return [i for i, special in zip(ids, mask) if not special]


class StructuredGuidance(Method):
    """Structured Diffusion Guidance: keep attributes with their objects. See :class:`StructuredConfig`.

    Example::

        attnkit.generate(pipe, "a red car and a white sheep", [StructuredGuidance()], seed=0)
    """

    id = "structured"
    title = "Structured Diffusion Guidance"
    paper = {"parser": "rules", "conjunction": False, "conjunction_first_key": "official", "steps": (0.0, 1.0),
             "lowercase": True}
    paper_run = {"steps": 50, "guidance_scale": 7.5, "sampler": "PNDM"}
    paper_source = ("Feng et al. 2023's official code: every step, one key and many values, the prompt lowercased; "
                    "PLMS (PNDM here), 50 steps, CFG 7.5; the rules parser stands in for its Stanza parse")
    config_class = StructuredConfig
    controller_class = StructuredController
    families = ("sd", "sdxl")
    attention = frozenset({"text"})
    #: the options users see: labels, kinds, ranges (this method's rows of the field table)
    fields = (
        Field("structured", "parser", "Phrase parser", "choice", "rules",
              "how noun phrases are found (stanza and spacy need their models installed)",
              choices=("rules", "stanza", "spacy")),
        Field("structured", "phrases", "Phrases", "words", None,
              "noun phrases to use instead of the parser's, e.g. a red car, a white sheep; empty: the parser "
              "finds them"),
        Field("structured", "conjunction", "Conjunction mode", "bool", False,
              "many keys and one value (for 'A and B' prompts) instead of one key and many values"),
        Field("structured", "conjunction_first_key", "Conjunction first key", "choice", "official",
              "which text gives the first key: the official code's (every phrase substituted) or the paper's (the "
              "prompt itself)",
              choices=("official", "prompt"), choice_labels=("as the official code", "as the paper"), advanced=True),
        Field("structured", "steps", "Active steps", "window", (0.0, 1.0),
              "the part of the run in which it acts, as from-to fractions: 0-1 the whole run, 0-0.5 the first half",
              advanced=True),
        Field("structured", "lowercase", "Parse lowercased", "bool", True,
              "the parser reads the prompt in lower case, as the official code (matters for stanza and spacy)",
              advanced=True),
    )
