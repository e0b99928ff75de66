"""Presets: method settings people share, as data.

One versioned JSON envelope::

    {"attnkit": 1, "name": "...", "description": "...",
     "methods": [{"id": "structured", "params": {"conjunction": true}}, ...],
     "settings": {"steps": 30, "guidance_scale": 7.5, ...}}

carried as a file, as a compact share code (``ak1.`` + URL-safe base64 of the zlib-compressed JSON), and inside PNG
metadata (an A1111-style ``parameters`` text chunk whose ``AttnKit`` key holds the share code, plus the full JSON in
an ``attnkit`` chunk). A preset is data only: it is parsed as JSON, never executed, and validated against the field
table (:mod:`attnkit.methods.fields`) with every problem reported at once, each with its path. Sizes and counts are capped
so a shared preset cannot hang a machine. ``settings`` holds prompt-independent generation settings only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import AttnKitError, shown
from .methods.fields import MAX_MASK_SIDE, Field, fields_for

SCHEMA_VERSION = 1
SHARE_PREFIX = f"ak{SCHEMA_VERSION}."
MAX_JSON_BYTES = 64 * 1024
MAX_METHODS = 8
MAX_TEXT = 200
#: migrations from older schema versions: version -> function(dict) -> dict of the next version. Version 1 is the
#: first released schema, so there is nothing to migrate yet.
MIGRATIONS: dict[int, Any] = {}

#: generation settings a preset may carry: name -> (kind, minimum, maximum)
SETTINGS: dict[str, tuple[str, float | None, float | None]] = {
    "steps": ("int", 1, 200),
    "guidance_scale": ("float", 0.0, 30.0),
    "width": ("int", 64, 4096),
    "height": ("int", 64, 4096),
    "seed": ("int", 0, 2**32 - 1),
    "sampler": ("str", None, None),
    "negative_prompt": ("str", None, None),
}


class PresetError(AttnKitError):
    """A preset that cannot be used; the message lists every problem with its path."""


@dataclass
class Preset:
    """A shareable set of methods and settings.

    Attributes:
        methods: ``[(method id, params)]``; params hold only what differs from the defaults.
        settings: generation settings (see :data:`SETTINGS`).
        name, description: shown in the preset lists.
    """

    methods: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str = ""

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_methods(cls, methods, settings: dict | None = None, name: str = "", description: str = "") -> "Preset":
        """A preset of configured :mod:`attnkit.methods` objects (only non-default values are kept)."""
        entries = [(m.id, {f.name: getattr(m.config, f.name) for f in fields_for(m.id)}) for m in methods]
        return cls.from_params(entries, settings, name, description)

    @classmethod
    def from_params(cls, entries, settings: dict | None = None, name: str = "", description: str = "") -> "Preset":
        """A validated preset of ``[(method id, params)]``; values equal to the field table's defaults are dropped."""
        methods = []
        for method_id, params in entries:
            defaults = {f.name: _jsonable(f.default) for f in fields_for(method_id)}
            kept = {k: _jsonable(v) for k, v in params.items() if k not in defaults or _jsonable(v) != defaults[k]}
            methods.append({"id": method_id, "params": kept})
        return cls.from_dict({"attnkit": SCHEMA_VERSION, "name": name, "description": description,
                              "methods": methods, "settings": settings or {}})

    def to_methods(self, words: list[str] | None = None) -> list:
        """The configured method objects of this preset.

        Args:
            words: the words picked in the prompt, for every method with a words option whose preset names none
                (presets are prompt-free): the subjects of Attend-and-Excite and A-STAR, the words observe maps.
        """
        import dataclasses

        from .methods import get_method

        out = []
        for method_id, params in self.methods:
            params = dict(params)
            has_words = "words" in {f.name for f in dataclasses.fields(get_method(method_id).config_class)}
            if words and has_words and params.get("words") is None and not params.get("token_indices"):
                params["words"] = list(words)
            if _needs_words(method_id) and params.get("words") is None and params.get("token_indices") is None:
                raise PresetError(f"{method_id} needs words: pick its words in the prompt")
            out.append(get_method(method_id)(**params))
        return out

    # -------------------------------------------------------------------------------------------- JSON forms

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attnkit": SCHEMA_VERSION}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["methods"] = [{"id": i, "params": _jsonable(p)} for i, p in self.methods]
        if self.settings:
            out["settings"] = dict(self.settings)
        return out

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Preset":
        """Parse and validate a preset's JSON text."""
        if isinstance(text, bytes):
            if len(text) > MAX_JSON_BYTES:
                raise PresetError(_too_big(len(text)))
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise PresetError(f"a preset is JSON text, got {type(text).__name__}")
        if len(text) > MAX_JSON_BYTES:
            raise PresetError(_too_big(len(text)))
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: not text any file or share code can hold
            raise PresetError("not a valid preset: the text holds an invalid character (a lone surrogate)") from None
        if size > MAX_JSON_BYTES:
            raise PresetError(_too_big(size))
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise PresetError(f"not a valid preset: the JSON does not parse ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "Preset":
        """Validate (and migrate) a preset given as parsed JSON."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise PresetError(f"not a valid preset: expected a JSON object, got {type(data).__name__}")
        version = data.get("attnkit")
        if isinstance(version, bool) or not isinstance(version, int):
            raise PresetError("not an attnkit preset: the 'attnkit' schema version number is missing")
        if version > SCHEMA_VERSION:
            raise PresetError(f"this preset was made by a newer attnkit (schema {version}); this one reads schema "
                              f"{SCHEMA_VERSION} and older: update attnkit")
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise PresetError(f"preset schema {version} is not known to this attnkit")
            data = MIGRATIONS[version](data)
            version += 1
        for key in sorted(str(k) for k in set(data) - {"attnkit", "name", "description", "methods", "settings"}):
            problems.append(f"{key[:40]}: unknown key")
        try:
            name = _text(data.get("name", ""), "name", problems)
            description = _text(data.get("description", ""), "description", problems)
            methods = _methods(data.get("methods"), problems)
            settings = _settings(data.get("settings", {}), problems)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # a shape no check above foresaw
            raise PresetError(f"not a valid preset ({type(exc).__name__}: {str(exc)[:200]})") from None
        if problems:
            raise PresetError("invalid preset: " + "; ".join(problems))
        return cls(methods, settings, name, description)

    # ------------------------------------------------------------------------------------------- share codes

    def to_share_code(self) -> str:
        """``ak1.`` + URL-safe base64 of the compressed JSON: short, pasteable, versioned."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")
        return SHARE_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii").rstrip("=")

    @classmethod
    def from_share_code(cls, code: str) -> "Preset":
        if not isinstance(code, str):
            raise PresetError(f"a share code is text, got {type(code).__name__}")
        code = code.strip()
        match = re.fullmatch(r"ak([0-9]{1,6})\.([A-Za-z0-9_-]*)", code)
        if not match:
            raise PresetError("not an attnkit share code (they start with 'ak1.' followed by letters, digits, - and _)")
        if int(match.group(1)) > SCHEMA_VERSION:
            raise PresetError(f"this share code was made by a newer attnkit (ak{match.group(1)}); update attnkit")
        body = match.group(2)
        if len(body) > MAX_JSON_BYTES * 2:
            raise PresetError("share code too long")
        try:
            compressed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            inflater = zlib.decompressobj()
            raw = inflater.decompress(compressed, MAX_JSON_BYTES + 1)
        except (binascii.Error, ValueError, zlib.error):
            raise PresetError("the share code is damaged or cut short; copy it again in full") from None
        if len(raw) > MAX_JSON_BYTES or inflater.unconsumed_tail:
            raise PresetError(_too_big(len(raw)))
        if not inflater.eof:
            raise PresetError("the share code is damaged or cut short; copy it again in full")
        return cls.from_json(raw)

    # --------------------------------------------------------------------------------------- PNG and infotext

    def to_infotext(self, prompt: str = "", negative_prompt: str = "", model: str = "", **settings) -> str:
        """An A1111-style ``parameters`` text: prompt, negative prompt, then ``key: value`` pairs ending with
        ``AttnKit: <share code>``, so webui's PNG Info reads it and attnkit restores the preset from it."""
        merged = {**self.settings, **settings}
        pairs = []
        for key, label in (("steps", "Steps"), ("sampler", "Sampler"), ("guidance_scale", "CFG scale"),
                           ("seed", "Seed")):
            if merged.get(key) is not None:
                pairs.append(f"{label}: {merged[key]}")
        if merged.get("width") and merged.get("height"):
            pairs.append(f"Size: {merged['width']}x{merged['height']}")
        if model:
            pairs.append(f"Model: {model}")
        pairs.append(f"AttnKit: {self.to_share_code()}")
        lines = [prompt]
        negative = negative_prompt or merged.get("negative_prompt") or ""
        if negative:
            lines.append(f"Negative prompt: {negative}")
        lines.append(", ".join(pairs))
        return "\n".join(lines)

    @classmethod
    def from_infotext(cls, text: str) -> "Preset":
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if text is not None and not isinstance(text, str):
            raise PresetError(f"generation parameters are text, got {type(text).__name__}")
        if text and len(text) > MAX_TEXT_CHUNK:
            raise PresetError(f"the generation parameters text is too long ({len(text) // 1024} KiB; at most "
                              f"{MAX_TEXT_CHUNK // 1024} KiB)")
        match = re.search(r"(?:^|[\s,])AttnKit:\s*(ak[0-9]{1,6}\.[A-Za-z0-9_-]*)", text or "")
        if not match:
            raise PresetError("no AttnKit preset in this text (no 'AttnKit:' entry)")
        return cls.from_share_code(match.group(1))

    def png_info(self, prompt: str = "", negative_prompt: str = "", model: str = "", **settings):
        """``PIL.PngImagePlugin.PngInfo`` with the ``parameters`` and ``attnkit`` chunks; pass as ``pnginfo=``."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("parameters", self.to_infotext(prompt, negative_prompt, model, **settings))
        info.add_text("attnkit", self.to_json(indent=None))
        return info

    def save_png(self, image, path, prompt: str = "", negative_prompt: str = "", model: str = "", **settings):
        """Save ``image`` as PNG carrying this preset (and the generation parameters)."""
        image.save(path, format="PNG", pnginfo=self.png_info(prompt, negative_prompt, model, **settings))

    @classmethod
    def from_png(cls, source) -> "Preset":
        """The preset of a PNG saved by attnkit (path, file object, bytes or PIL image); also reads the ``AttnKit``
        entry of a ``parameters`` text written elsewhere.

        Only the metadata is read: a PNG's text chunks are parsed from the file without decoding a pixel (so an
        image of any declared size, a cut-off file or an animated PNG costs what its text costs); other formats
        go through PIL, whose size guard applies.
        """
        text = _image_text(source)
        if "attnkit" in text:
            return cls.from_json(text["attnkit"])
        if "parameters" in text:
            return cls.from_infotext(text["parameters"])
        raise PresetError("this image carries no attnkit preset (no 'attnkit' or 'parameters' metadata)")

    # ------------------------------------------------------------------------------------- built-in and user

    @staticmethod
    def builtins() -> dict[str, "Preset"]:
        """The presets shipped with attnkit, by name: the files of ``presets_builtin/`` and, for every method with
        a paper configuration, ``"<title> (paper settings)"`` (:func:`paper_preset`)."""
        out = {}
        folder = resources.files("attnkit") / "presets_builtin"
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                preset = Preset.from_json(entry.read_text(encoding="utf-8"))
                out[preset.name] = preset
        from .methods import REGISTRY

        for cls in REGISTRY.values():
            if cls.paper:
                preset = paper_preset(cls.id)
                out[preset.name] = preset
        return out

    def save(self, directory: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
        """Write this preset to the user preset folder (see :func:`user_dir`) as ``<name>.json``.

        The file is written whole or not at all (a temporary file in the same folder, then ``os.replace``): a full
        disk or a killed process never leaves a truncated preset or loses the one it replaces. A preset of the same
        name is replaced only with ``overwrite=True``.

        Raises:
            PresetError: the name is taken (without ``overwrite``), or the folder cannot be written (the message
                says why and where).
        """
        import tempfile

        path = _user_path(self.name, directory)
        if path.exists() and not overwrite:
            raise PresetError(f"a preset named {self.name!r} already exists; choose another name or delete it first")
        text = self.to_json()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise PresetError(f"could not save preset {self.name!r} in {path.parent}: {exc.strerror or exc}; check "
                              "that the folder is writable and the disk has space (nothing was changed)") from None
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Preset":
        """A preset from a ``.json`` file (read up to the size cap, never further) or an image's metadata."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            return cls.from_png(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_JSON_BYTES + 1)
        except OSError as exc:
            raise PresetError(f"cannot read {path.name}: {exc.strerror or exc}") from None
        if len(data) > MAX_JSON_BYTES:
            raise PresetError(f"{path.name} is too large for a preset (presets are at most "
                              f"{MAX_JSON_BYTES // 1024} KiB)")
        return cls.from_json(data)

    @classmethod
    def load(cls, name: str, directory: str | os.PathLike | None = None) -> "Preset":
        """A user preset by name (or a built-in one of that name)."""
        builtins = cls.builtins()
        try:
            path = _user_path(name, directory)
        except PresetError:  # built-in names may hold characters user file names may not
            if name in builtins:
                return builtins[name]
            raise
        if path.is_file():
            return cls.from_file(path)
        if name in builtins:
            return builtins[name]
        raise PresetError(f"no preset named {name!r}; saved presets: {', '.join(user_presets(directory)) or 'none'}")


#: most bytes of one PNG text chunk attnkit reads (A1111's parameters text is a few KiB)
MAX_TEXT_CHUNK = 1024 * 1024
#: most chunks walked in a PNG before giving up (a real image has a few dozen)
MAX_PNG_CHUNKS = 100_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image_text(source) -> dict[str, str]:
    """The text metadata of an image (see :meth:`Preset.from_png`); every failure is a :class:`PresetError`."""
    from PIL import Image

    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        if filename and getattr(source, "format", None) == "PNG" and os.path.isfile(filename):
            return _image_text(filename)
        info = getattr(source, "info", None) or {}
        return {str(k): v for k, v in info.items() if isinstance(v, str)}
    if isinstance(source, (bytes, bytearray, memoryview)):
        import io

        source = io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                return _image_text(handle)
        except OSError as exc:
            raise PresetError(f"cannot open that image ({exc.strerror or exc})") from None
    if not hasattr(source, "read"):
        raise PresetError(f"an image is a path, a file, bytes or a PIL image, got {type(source).__name__}")
    try:
        head = source.read(8)
        if head == _PNG_SIGNATURE:
            return _png_text(source)
        if hasattr(source, "seek"):
            source.seek(-len(head), os.SEEK_CUR)
        with Image.open(source) as image:  # JPEG, WebP...: PIL reads the header and metadata only
            return {str(k): v for k, v in image.info.items() if isinstance(v, str)}
    except PresetError:
        raise
    except Exception as exc:  # truncated, a decompression bomb, not an image at all...
        raise PresetError(f"cannot read that image ({type(exc).__name__}: {str(exc)[:200]})") from None


def _png_text(handle) -> dict[str, str]:
    """``tEXt``/``zTXt``/``iTXt`` chunks of a PNG stream positioned after its signature; pixel data is skipped."""
    import struct

    out: dict[str, str] = {}
    for _ in range(MAX_PNG_CHUNKS):
        header = handle.read(8)
        if len(header) < 8:
            break  # cut short: keep what was read
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"tEXt", b"zTXt", b"iTXt") and length <= MAX_TEXT_CHUNK:
            data = handle.read(length)
            handle.read(4)  # CRC
            if len(data) < length:
                break
            key, value = _png_text_chunk(kind, data)
            if key is not None:
                out.setdefault(key, value)
            continue
        if kind == b"IEND":
            break
        if hasattr(handle, "seek"):
            handle.seek(length + 4, os.SEEK_CUR)
        else:
            for _ in range(0, length + 4, 1 << 20):
                handle.read(min(1 << 20, length + 4))
    return out


def _png_text_chunk(kind: bytes, data: bytes) -> tuple[str | None, str]:
    key, sep, rest = data.partition(b"\0")
    if not sep or not 0 < len(key) <= 79:
        return None, ""
    name = key.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:]).decode("latin-1") if rest[:1] == b"\0" else ""
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text (UTF-8)
    if len(rest) < 2:
        return None, ""
    compressed, method, rest = rest[0], rest[1], rest[2:]
    parts = rest.split(b"\0", 2)
    if len(parts) < 3:
        return None, ""
    body = parts[2]
    if compressed:
        if method != 0:
            return None, ""
        body = _inflate(body)
    return name, body.decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_CHUNK + 1)
    except zlib.error:
        return b""
    return b"" if len(out) > MAX_TEXT_CHUNK else out


def prompts_of_infotext(text: str) -> tuple[str, str]:
    """``(prompt, negative prompt)`` of an A1111-style ``parameters`` text: the lines before the last (which holds the
    ``key: value`` pairs), the negative prompt starting at a ``Negative prompt:`` line."""
    lines = (text or "").splitlines()
    if lines and re.search(r"(^|, )(Steps|AttnKit): ", lines[-1]):
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip()


def prompts_of_image(source) -> tuple[str, str] | None:
    """``(prompt, negative prompt)`` an image's ``parameters`` text holds, or ``None`` when it holds none."""
    text = _image_text(source).get("parameters")
    return prompts_of_infotext(text) if text else None


def user_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where user presets live: ``directory``, else ``$ATTNKIT_PRESETS``, else ``$XDG_CONFIG_HOME/attnkit/presets``
    (``~/.config/attnkit/presets``). Never inside the package."""
    if directory is not None:
        return Path(directory).expanduser()
    if os.environ.get("ATTNKIT_PRESETS"):
        return Path(os.environ["ATTNKIT_PRESETS"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "attnkit" / "presets"


def user_presets(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the saved user presets."""
    folder = user_dir(directory)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def delete_preset(name: str, directory: str | os.PathLike | None = None) -> None:
    path = _user_path(name, directory)
    if not path.is_file():
        raise PresetError(f"no saved preset named {name!r}")
    try:
        path.unlink()
    except OSError as exc:
        raise PresetError(f"could not delete preset {name!r} in {path.parent}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------------ validation


def _user_path(name: str, directory) -> Path:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}", name or ""):
        raise PresetError(f"preset name {name!r}: use 1-64 letters, digits, spaces, '-', '_' or '.'")
    if name.endswith(".") or ".." in name:
        raise PresetError(f"preset name {name!r} may not end with '.' or contain '..'")
    return user_dir(directory) / f"{name}.json"


def _bound(value, kind: str) -> str:
    return str(int(value)) if kind == "int" else f"{value:g}"


def _too_big(size: int) -> str:
    return f"preset too large ({size / 1024:.0f} KiB); presets are at most {MAX_JSON_BYTES // 1024} KiB"


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _text(value, path: str, problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"{path}: expected text, got {type(value).__name__}")
        return ""
    if len(value) > 1000:
        problems.append(f"{path}: at most 1000 characters")
        return ""
    return value


def _methods(entries, problems: list[str]) -> list[tuple[str, dict]]:
    from .methods import REGISTRY

    if not isinstance(entries, list):
        problems.append("methods: expected a list of {'id', 'params'} objects")
        return []
    if len(entries) > MAX_METHODS:
        problems.append(f"methods: at most {MAX_METHODS} methods, got {len(entries)}")
        return []
    out, seen = [], set()
    for n, entry in enumerate(entries):
        path = f"methods[{n}]"
        start = len(problems)
        if not isinstance(entry, dict):
            problems.append(f"{path}: expected an object with 'id' and 'params'")
            continue
        for key in sorted(set(entry) - {"id", "params"}):
            problems.append(f"{path}.{key}: unknown key")
        method_id = entry.get("id")
        if not isinstance(method_id, str) or method_id not in REGISTRY:
            problems.append(f"{path}.id: unknown method {method_id!r} (known: {', '.join(sorted(REGISTRY))})")
            continue
        if method_id in seen:
            problems.append(f"{path}.id: {method_id} is given twice")
            continue
        seen.add(method_id)
        params = entry.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{path}.params: expected an object")
            continue
        rows = {f.name: f for f in fields_for(method_id)}
        clean = {}
        for key in params:
            if key not in rows:
                problems.append(f"{path}.params.{key}: unknown option of {method_id} (options: {', '.join(rows)})")
                continue
            before = len(problems)
            value = _value(rows[key], params[key], f"{path}.params.{key}", problems)
            if len(problems) == before:
                clean[key] = value
        has_words = clean.get("words") is not None or clean.get("token_indices") is not None
        if len(problems) == start and (has_words or not _needs_words(method_id)):
            try:  # the config's own checks across fields (words or token_indices, a mask per word...)
                REGISTRY[method_id](**clean)
            except (AttnKitError, TypeError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
        out.append((method_id, clean))
    return out


def _needs_words(method_id: str) -> bool:
    """Whether the method acts only on target words (declared on its class)."""
    from .methods import get_method

    return get_method(method_id).needs_words


def _number(value, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _value(f: Field, value, path: str, problems: list[str]):
    """Check one option against its field row; returns the normalised value (tuples for windows, int keys)."""
    def bad(expected: str):
        problems.append(f"{path}: expected {expected}, got {shown(value)}")

    kind = f.kind
    if kind == "bool":
        return value if isinstance(value, bool) else bad("true or false")
    if kind in ("int", "float"):
        if not _number(value, kind):
            return bad(f"{'an integer' if kind == 'int' else 'a number'} from {f.minimum:g} to {f.maximum:g}")
        if not f.minimum <= value <= f.maximum:
            return bad(f"a value from {f.minimum:g} to {f.maximum:g}")
        return int(value) if kind == "int" else float(value)
    if kind == "choice":
        return value if value in f.choices else bad(f"one of {', '.join(f.choices)}")
    if kind == "words":
        if value is None:
            return None
        if (not isinstance(value, list) or not value or len(value) > f.limit
                or not all(isinstance(w, str) and 0 < len(w.strip()) <= MAX_TEXT for w in value)):
            return bad(f"a list of 1 to {f.limit} words")
        return list(value)
    if kind == "indices":
        if value is None:
            return None
        if (not isinstance(value, list) or not value or len(value) > f.limit
                or not all(_number(i, "int") and 0 <= i <= 1000 for i in value)):
            return bad(f"a list of 1 to {f.limit} token positions")
        return list(value)
    if kind == "window":
        return _window(value) or bad("[start, stop] with 0 <= start < stop <= 1")
    if kind == "windows":
        if not isinstance(value, list) or not 0 < len(value) <= f.limit:
            return bad(f"a list of 1 to {f.limit} [start, stop] windows")
        windows = [_window(w) for w in value]
        return windows if all(windows) else bad("windows [start, stop] with 0 <= start < stop <= 1")
    if kind == "grid":
        if value is None:
            return None
        if _number(value, "int") and 1 <= value <= 256:
            return value
        if isinstance(value, list) and len(value) == 2 and all(_number(x, "int") and 1 <= x <= 256 for x in value):
            return (value[0], value[1])
        return bad("null (auto), a side or [h, w] from 1 to 256")
    if kind == "thresholds":
        if not isinstance(value, dict) or len(value) > f.limit:
            return bad(f"an object of at most {f.limit} step: threshold pairs")
        out = {}
        for k, v in value.items():
            if not (re.fullmatch(r"[0-9]{1,4}", str(k)) and int(k) <= 1000) or not (_number(v, "float") and 0 <= v <= 1):
                return bad("step numbers mapped to thresholds between 0 and 1")
            out[int(k)] = float(v)
        return out
    if kind == "masks":
        if value is None:
            return None
        if not isinstance(value, dict) or not 0 < len(value) <= f.limit:
            return bad(f"an object of 1 to {f.limit} word: mask pairs")
        for word, mask in value.items():
            ok = (isinstance(mask, list) and 0 < len(mask) <= MAX_MASK_SIDE
                  and all(isinstance(row, list) and len(row) == len(mask[0]) and 0 < len(row) <= MAX_MASK_SIDE
                          and all(not isinstance(x, bool) and x in (0, 1) for x in row) for row in mask))
            if not ok:
                return bad(f"masks as lists of rows of 0 and 1, at most {MAX_MASK_SIDE} on a side")
        return {w: [[int(x) for x in r] for r in m] for w, m in value.items()}
    raise AssertionError(f"unknown field kind {kind}")  # pragma: no cover - the table is checked by a test


def _window(value):
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(x, "float") for x in value)
            and 0 <= value[0] < value[1] <= 1):
        return (float(value[0]), float(value[1]))
    return None


def check_settings(settings: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """``settings`` held to the caps a preset carries (:data:`SETTINGS`), all problems in one
    :class:`PresetError`; ``labels`` renames the keys in the message (``{"guidance_scale": "--cfg"}``)."""
    problems: list[str] = []
    out = _settings({k: v for k, v in settings.items() if v is not None}, problems)
    if problems:
        text = "; ".join(problems)
        for key, label in (labels or {}).items():
            text = text.replace(f"settings.{key}:", f"{label}:")
        raise PresetError(text)
    return out


def _settings(value, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append("settings: expected an object")
        return {}
    out = {}
    for key, item in value.items():
        if key not in SETTINGS:
            problems.append(f"settings.{key}: unknown setting (settings: {', '.join(SETTINGS)})")
            continue
        kind, low, high = SETTINGS[key]
        if kind == "str":
            if isinstance(item, str) and len(item) <= 1000:
                out[key] = item
            else:
                problems.append(f"settings.{key}: expected text of at most 1000 characters")
        elif _number(item, kind) and low <= item <= high and (key not in ("width", "height") or item % 8 == 0):
            out[key] = int(item) if kind == "int" else float(item)
        elif key in ("width", "height") and _number(item, kind) and low <= item <= high:
            problems.append(f"settings.{key}: expected a multiple of 8, got {shown(item)}")
        else:
            problems.append(f"settings.{key}: expected a{'n integer' if kind == 'int' else ' number'} "
                            f"from {_bound(low, kind)} to {_bound(high, kind)}, got {shown(item)}")
    return out


def paper_preset(method_id: str) -> Preset:
    """The built-in preset of a method at its paper's settings (the method class's ``paper`` and ``paper_run``):
    one click in the app, one name in the CLI and the webui, one share code."""
    from .methods import get_method

    cls = get_method(method_id)
    if not cls.paper:
        raise PresetError(f"{method_id} has no paper settings")
    params = Preset.from_methods([cls(settings="paper", **_stand_in(cls))]).methods[0][1]
    params.pop("words", None)  # the words are the user's prompt's
    return Preset.from_params([(method_id, params)], settings=dict(cls.paper_run),
                              name=f"{cls.title} (paper settings)", description=f"{cls.paper_source}.")


def _stand_in(cls) -> dict:
    """What a method that needs words must be built with to serialise its other options."""
    return {"words": ["x"]} if cls.needs_words else {}
