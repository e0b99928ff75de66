"""Loading real pipelines, and building tiny offline ones.

``load_pipeline`` takes what users have: a local diffusers folder, a single-file ``.safetensors``/``.ckpt``
checkpoint, a hub id (on a machine that reaches the hub), or one of the built-in names: ``shapes`` (a small model
trained on pictures of coloured shapes, shipped in the package; see :mod:`attnkit.lab`) and the random-weight
``tiny-sd15``, ``tiny-sdxl``, ``tiny-flux``.

``tiny_pipeline`` builds real diffusers pipelines (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
``FluxPipeline``) with deterministic random weights from configs, an 8x VAE (so image size maps to latent size as
in the real models) and a real CLIP BPE tokenizer built offline from the vocabulary file that open-clip-torch
ships. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import AttnKitError, ModelLoadError, UnsupportedModelError, one_line

logger = logging.getLogger(__name__)

TINY_NAMES = {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl", "tiny-flux": "flux"}
TINY_FAMILIES = tuple(TINY_NAMES.values())
#: how the model families read in messages
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "flux": "Flux"}
#: Default image side of the tiny pipelines (pixels): big enough that maps show structure, small enough for a CPU.
TINY_IMAGE_SIZE = 128
#: the built-in trained model: 64 px pictures of coloured circles, squares and triangles (:mod:`attnkit.lab`)
SHAPES = "shapes"
SHAPES_FILE = Path(__file__).resolve().parent / "lab" / "shapes.safetensors"
SHAPES_IMAGE_SIZE = 64
#: the default model of the app and the CLI
DEFAULT_MODEL = SHAPES

CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_CLIP_NUM_MERGES = 49152 - 256 - 2


# --------------------------------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2/CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_vocab_path() -> Path:
    """Path of the CLIP BPE merges file shipped inside the open-clip-torch wheel.

    ``open_clip`` itself is never imported (it pulls torchvision); only its package folder is located.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline CLIP tokenizer needs open-clip-torch's vocabulary file; "
            "install it with `pip install --no-deps open-clip-torch`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / CLIP_VOCAB_FILE
    if not path.is_file():
        raise ModelLoadError(f"open-clip-torch is installed but {path} is missing; reinstall open-clip-torch")
    return path


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    lines = gzip.open(clip_vocab_path()).read().decode("utf-8").split("\n")
    merges = tuple(lines[1 : 1 + _CLIP_NUM_MERGES])
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return tuple((t, i) for i, t in enumerate(tokens)), merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP BPE tokenizer (49,408 entries), built offline.

    Args:
        pad_token: ``"<|endoftext|>"`` as SD 1.x and SDXL's first encoder use; ``"!"`` for SDXL's second.

    Returns:
        ``transformers.CLIPTokenizer`` with ``model_max_length=77``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token, model_max_length=77)


def tiny_t5_tokenizer(max_length: int = 512):
    """A SentencePiece-style (Unigram) T5 tokenizer built in memory from the CLIP vocabulary.

    Its ids are not real T5 ids; it is for random-weight test models only. Real Flux checkpoints bring their own.
    """
    from transformers import T5Tokenizer

    vocab, _ = _clip_vocab_and_merges()
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = set()
    for token, rank in vocab[:-2]:
        piece = "▁" + token[:-4] if token.endswith("</w>") else token
        if piece not in seen and piece.isprintable():
            seen.add(piece)
            pieces.append((piece, -math.log(rank + 2.0)))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


# ------------------------------------------------------------------------------------------- tiny pipelines


def _tiny_vae(latent_channels: int, flux: bool = False):
    from diffusers import AutoencoderKL

    kwargs: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=TINY_IMAGE_SIZE,
    )
    if flux:
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return AutoencoderKL(**kwargs)


def _tiny_clip_text(with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    model = CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)
    return model.eval()


def _tiny_unet(cross_attention_dim: int, sdxl: bool):
    from diffusers import UNet2DConditionModel

    kwargs: dict[str, Any] = dict(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    if sdxl:
        kwargs.update(
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
        )
    return UNet2DConditionModel(**kwargs)


def _build_tiny(family: str):
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if family == "sd15":
        unet = _tiny_unet(32, sdxl=False)
        scheduler = PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
            steps_offset=1, set_alpha_to_one=False,
        )
        return StableDiffusionPipeline(
            vae=_tiny_vae(4), text_encoder=_tiny_clip_text(), tokenizer=clip_tokenizer(), unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if family == "sdxl":
        unet = _tiny_unet(64, sdxl=True)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(4), text_encoder=_tiny_clip_text(), text_encoder_2=_tiny_clip_text(with_projection=True),
            tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
        )
    if family == "flux":
        from transformers import T5Config, T5EncoderModel

        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        )
        t5_tokenizer = tiny_t5_tokenizer()
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        ).eval()
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_vae(4, flux=True), text_encoder=_tiny_clip_text(),
            tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer,
        )
    raise UnsupportedModelError(f"unknown tiny family {family!r}; use one of {', '.join(TINY_FAMILIES)}")


def tiny_pipeline(family: str = "sd15", seed: int = 0):
    """A real diffusers pipeline with deterministic random weights, built offline from configs.

    Args:
        family: ``"sd15"`` (StableDiffusionPipeline), ``"sdxl"`` (StableDiffusionXLPipeline) or ``"flux"``
            (FluxPipeline).
        seed: seeds the weight initialisation; the same seed gives the same weights. The caller's global torch
            random state is left as it was.

    Returns:
        The pipeline, on the CPU in float32. Its default image size is 128 px (SD/SDXL); pass ``height``/``width``
        to Flux, whose default is 1024 px.
    """
    if family not in TINY_FAMILIES:
        raise UnsupportedModelError(f"unknown tiny family {family!r}; use one of {', '.join(TINY_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _build_tiny(family)
    pipe.register_to_config(_name_or_path=f"tiny-{family}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_tiny(pipe) -> bool:
    """Whether ``pipe`` is one of the built-in tiny pipelines."""
    return str(getattr(pipe, "name_or_path", "") or "").startswith("tiny-")


def shapes_pipeline():
    """The built-in shapes model (trained; shipped in the package), on the CPU in float32."""
    if not SHAPES_FILE.is_file():
        raise ModelLoadError(f"the built-in shapes model is missing from this install ({SHAPES_FILE}); reinstall "
                             "attnkit, or train one with 'attnkit lab train' and load the file it exports")
    from .lab.model import load

    pipe = load(SHAPES_FILE)
    pipe.register_to_config(_name_or_path=SHAPES)
    return pipe


def is_builtin(pipe) -> bool:
    """Whether ``pipe`` is a built-in model (the shapes model or a tiny pipeline)."""
    return builtin_size(pipe) is not None


def builtin_size(source) -> int | None:
    """The image side a built-in model draws at (64 px for ``shapes``, 128 px for the tiny ones), from its name or
    its pipeline; ``None`` for any other model (which has its own default)."""
    name = source if isinstance(source, str) else str(getattr(source, "name_or_path", "") or "")
    if name == SHAPES:
        return SHAPES_IMAGE_SIZE
    return TINY_IMAGE_SIZE if name.startswith("tiny-") else None


# ------------------------------------------------------------------------------------------------- families


def family_of(pipe) -> str:
    """The model family of a diffusers pipeline: ``"sd"`` (SD 1.x/2.x), ``"sdxl"`` or ``"flux"``.

    Decided from the components, so img2img/inpaint variants of the same family are recognised too.

    Raises:
        UnsupportedModelError: for any other pipeline.
    """
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    unet = getattr(pipe, "unet", None)
    transformer = getattr(pipe, "transformer", None)
    if isinstance(transformer, FluxTransformer2DModel):
        return "flux"
    if isinstance(unet, UNet2DConditionModel):
        if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None:
            return "sdxl"
        return "sd"
    raise UnsupportedModelError(
        f"{type(pipe).__name__} is not supported: attnkit works with Stable Diffusion 1.x/2.x, SDXL and Flux "
        "diffusers pipelines"
    )


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoising network (``pipe.unet`` or ``pipe.transformer``)."""
    return pipe.transformer if family_of(pipe) == "flux" else pipe.unet


# ---------------------------------------------------------------------------------------------------- loading


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ModelLoadError(f"dtype={dtype!r} is not understood; use one of float16, bfloat16, float32")


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained`` takes ``dtype`` since diffusers 0.42 (``torch_dtype`` before, now deprecated)."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype": dtype}


def _checkpoint_family(path: Path) -> str:
    """Family of a single-file checkpoint, read from its tensor names (no weights are loaded for .safetensors)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
        except Exception as exc:  # a truncated or non-safetensors file
            raise ModelLoadError(f"{path} is not a readable .safetensors file ({one_line(exc)})") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a readable checkpoint ({one_line(exc)})") from exc
        keys = set(state.get("state_dict", state).keys())
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "flux"
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "sdxl"
    if any(k.startswith("model.diffusion_model.input_blocks") for k in keys):
        return "sd"
    raise ModelLoadError(
        f"{path} does not look like an SD 1.x/2.x, SDXL or Flux checkpoint (no known tensor names); "
        "pass a diffusers folder instead"
    )


def _load_single_file(path: Path, dtype: torch.dtype, config: str | None):
    from diffusers import FluxPipeline, FluxTransformer2DModel, StableDiffusionPipeline, StableDiffusionXLPipeline

    family = _checkpoint_family(path)
    try:
        if family == "flux":
            if config is None:
                raise ModelLoadError(
                    f"{path} is a Flux transformer checkpoint; pass config=<diffusers Flux folder or hub id> "
                    "for the text encoders and VAE (CLI: --config)"
                )
            transformer = FluxTransformer2DModel.from_single_file(
                str(path), config=config, subfolder="transformer", **_dtype_kwargs(dtype)
            )
            return FluxPipeline.from_pretrained(config, transformer=transformer, **_dtype_kwargs(dtype))
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        kwargs: dict[str, Any] = _dtype_kwargs(dtype)
        if config is not None:
            kwargs["config"] = config
        return cls.from_single_file(str(path), **kwargs)
    except AttnKitError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} as a {family} checkpoint: {one_line(exc)}. Offline, pass config=<a local diffusers "
            "folder of the same architecture> (CLI: --config)"
        ) from exc



def _hub_reason(exc: BaseException) -> str:
    """Why a hub id did not load, in plain words (the libraries' own messages run to hundreds of characters)."""
    text = f"{type(exc).__name__} {exc}".lower()
    if any(k in text for k in ("offline", "connect", "resolve", "timed out", "network", "local_files_only")):
        return "the model hub cannot be reached from here (offline)"
    if any(k in text for k in ("not found", "404", "repositorynotfound", "does not appear to have")):
        return "the model hub has no such model"
    return f"the model hub did not give it ({type(exc).__name__})"


def check_device(device) -> str:
    """``device`` as a string torch accepts and this machine has, or a :class:`ModelLoadError` saying what to use."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"device {str(device)[:40]!r} is not a device name; use cpu, cuda, cuda:1 or mps") \
            from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device {device!r}: this machine has no CUDA GPU available; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(f"device {device!r}: this machine has {count} CUDA GPU(s) (cuda:0 to "
                                 f"cuda:{count - 1})")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda or mps")
    return str(device)


def load_pipeline(source: str | os.PathLike, device: str | None = None, dtype=None, config: str | None = None):
    """Load a Stable Diffusion 1.x/2.x, SDXL or Flux pipeline from what the user has.

    Args:
        source: ``shapes`` / ``tiny-sd15`` / ``tiny-sdxl`` / ``tiny-flux`` (built in, offline); a local diffusers
            folder (with ``model_index.json``); a single-file ``.safetensors`` or ``.ckpt`` checkpoint; or a hub id
            such as ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (needs a reachable hub or a filled cache).
        device: ``"cuda"``, ``"mps"``, ``"cpu"``...; default: the best available (:func:`default_device`).
        dtype: ``torch.float16``/``"fp16"``, ``"bf16"``, ``"fp32"``...; default: float16 on a GPU, float32 on CPU.
        config: for single-file checkpoints, a diffusers folder or hub id whose configs describe the model
            (needed offline, and for Flux transformer-only files).

    Returns:
        The pipeline on ``device``.

    Raises:
        ModelLoadError: the source does not exist or cannot be loaded; the message says what to pass instead.
        UnsupportedModelError: it loaded, but is not an SD/SDXL/Flux pipeline.
    """
    device = check_device(device or default_device())
    torch_dtype = _resolve_dtype(dtype, device)
    name = os.fspath(source)
    if name in TINY_NAMES or name == SHAPES:
        pipe = shapes_pipeline() if name == SHAPES else tiny_pipeline(TINY_NAMES[name])
        if device != "cpu" or torch_dtype != torch.float32:
            pipe = pipe.to(device=device, dtype=torch_dtype)
        return pipe
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json); "
                "pass a diffusers folder, a .safetensors file, or one of " + ", ".join(BUILTIN_NOTES)
            )
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(str(path), **_dtype_kwargs(torch_dtype))
        except Exception as exc:
            raise ModelLoadError(f"could not load the diffusers folder {path}: {one_line(exc)}") from exc
    elif path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise ModelLoadError(f"{path} is a file but not a .safetensors or .ckpt checkpoint")
        pipe = _load_single_file(path, torch_dtype, config)
    elif path.suffix in (".safetensors", ".ckpt") or name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise ModelLoadError(f"no such file or folder: {path}")
    else:
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(name, **_dtype_kwargs(torch_dtype))
        except Exception as exc:
            logger.debug("loading %r from the model hub failed", name, exc_info=exc)
            raise ModelLoadError(
                f"no model {name!r}: it is not a built-in model ({', '.join(BUILTIN_NOTES)}), a folder or a file here, "
                f"and {_hub_reason(exc)}; pass a diffusers folder, a .safetensors file or a hub id"
            ) from exc
    family_of(pipe)  # refuse unsupported pipelines here, where the input entered
    return pipe.to(device)


#: what the built-in models are, for model choosers
BUILTIN_NOTES = {
    SHAPES: "built-in, trained: coloured circles, squares and triangles, 64 px",
    "tiny-sd15": "built-in SD 1.5 layout, random weights",
    "tiny-sdxl": "built-in SDXL layout, random weights",
    "tiny-flux": "built-in Flux layout, random weights",
}


def models_dir() -> Path:
    """The user's models folder: ``$ATTNKIT_MODELS``, else ``~/.config/attnkit/models``."""
    return Path(os.environ.get("ATTNKIT_MODELS") or Path.home() / ".config" / "attnkit" / "models").expanduser()


def model_choices(folder: str | os.PathLike | None = None, limit: int = 200) -> list[tuple[str, str]]:
    """``(label, source)`` for a model chooser: the built-in models, then the diffusers folders and
    ``.safetensors``/``.ckpt`` files directly inside ``folder`` (default :func:`models_dir`), sorted by name.

    Only the folder's listing is read (no model is opened and nothing is asked of the model hub); a missing or
    unreadable folder lists nothing of its own."""
    out = [(f"{name} ({note})", name) for name, note in BUILTIN_NOTES.items()]
    root = Path(folder).expanduser() if folder else models_dir()
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return out
    for entry in entries[: limit * 4]:
        try:
            if entry.is_dir() and (entry / "model_index.json").is_file():
                out.append((f"{entry.name} (diffusers folder)", str(entry)))
            elif entry.is_file() and entry.suffix.lower() in (".safetensors", ".ckpt"):
                out.append((f"{entry.name} (checkpoint)", str(entry)))
        except OSError:
            continue
        if len(out) >= len(BUILTIN_NOTES) + limit:
            break
    return out
