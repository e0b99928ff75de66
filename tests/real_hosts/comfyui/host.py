"""The real ComfyUI, in this process: booted as ``main.py`` boots it, with the attnkit pack loaded from
``custom_nodes/`` by ComfyUI's own loader, and graphs (API format, what ``POST /prompt`` takes) validated and run by
ComfyUI's own ``execution.validate_prompt`` and ``execution.PromptExecutor``.

Set by ``tools/test_hosts.sh comfyui``: ``ATTNKIT_COMFYUI`` (the ComfyUI source tree, read-only is fine),
``ATTNKIT_COMFYUI_BASE`` (a writable base directory: custom_nodes/attnkit holds the pack; models, input, output,
temp and user go there too) and ``ATTNKIT_HOST_CACHE`` (where the test checkpoint is kept between runs).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field

import numpy as np

COMFY = os.environ.get("ATTNKIT_COMFYUI", "")
BASE = os.environ.get("ATTNKIT_COMFYUI_BASE", "")
CACHE = os.environ.get("ATTNKIT_HOST_CACHE", "")
PACK = os.path.join(BASE, "custom_nodes", "attnkit")

#: the test checkpoint: SD 1.5's widths (model_channels 320, context_dim 768: what ComfyUI's detection requires to
#: call it SD 1.5), its full CLIP-L text encoder and full VAE (ComfyUI builds both from fixed configs), and a UNet of
#: three levels (channel_mult 1, 2, 2; one res block each; a transformer block at every level) instead of four, so a
#: CPU runs a graph in seconds. Its cross-attention layers sit at 1/1, 1/2 and 1/4 of the latent, as SD 1.5's do.
UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1, 1, 1],
    "transformer_depth": [1, 1, 1], "channel_mult": [1, 2, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
#: an SD 2.x-shaped checkpoint: what ComfyUI's detection requires of SD 2.x (model_channels 320, context_dim 1024,
#: linear projections in the transformers: ``supported_models.SD20``) around the same three-level UNet, with heads of
#: 64 channels, and SD 2.x's full OpenCLIP ViT-H text encoder (its positions come from ``clip_h``)
UNET_SD2 = {**UNET, "context_dim": 1024, "use_linear_in_transformer": True, "num_heads": -1, "num_head_channels": 64}
#: SD 1.x's VAE (``comfy/sd.py``'s default SD 1.x/2.x config)
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
CHECKPOINTS = {"sd15": ("attnkit-test-sd15-v1.safetensors", "SD15", UNET),
               "sd2": ("attnkit-test-sd2-v1.safetensors", "SD20", UNET_SD2)}


class Messages:
    """Stands for ``server.PromptServer`` (``server.py``) in what the executor calls on it: ``send_sync`` (the
    websocket messages a browser would get), ``queue_updated``, ``client_id``, ``last_node_id``, ``last_prompt_id``.
    It keeps the messages instead of sending them."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sent: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data))

    def queue_updated(self):
        pass


_booted = None


def boot(with_pack: bool = True):
    """Import ComfyUI as ``main.py`` does (``--cpu``, ``--base-directory``) and load every custom node, the attnkit
    pack included (``with_pack=False``: as ``--disable-all-custom-nodes`` does, no custom node at all); returns
    ``(nodes, execution)``. Idempotent within a process."""
    global _booted
    if _booted is not None:
        return _booted
    if not (COMFY and BASE):
        raise RuntimeError("run this tier with: bash tools/test_hosts.sh comfyui")
    sys.argv = ["main.py", "--cpu", "--base-directory", BASE] + ([] if with_pack else ["--disable-all-custom-nodes"])
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths  # noqa: F401  (reads --base-directory)
    import utils.extra_config  # noqa: F401  (main.py imports ComfyUI's utils package before anything else)
    import execution
    import nodes

    os.makedirs(os.path.join(BASE, "models", "checkpoints"), exist_ok=True)
    if with_pack:
        _write_other_pack()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=with_pack, init_api_nodes=False))
    _booted = (nodes, execution)
    return _booted


OTHER_PACK = '''"""Another custom node pack (written by attnkit's tests): an attention replace, as IP-Adapter-style packs put
one on every cross-attention block of a MODEL clone, keyed by (block, number, index) or by (block, number)."""

from comfy.ldm.modules.attention import optimized_attention

CALLS = []


def replace(q, k, v, extra_options):
    CALLS.append(extra_options["block"])
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


class OtherPackAttention:
    CATEGORY = "tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "keyed": (["block_index", "block"],)}}

    def patch(self, model, keyed):
        clone = model.clone()
        dm = clone.model.diffusion_model
        for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
            for number, block in enumerate(blocks):
                for module in block:
                    for index, _ in enumerate(getattr(module, "transformer_blocks", [])):
                        key = (name, 0 if name == "middle" else number) + ((index,) if keyed == "block_index" else ())
                        clone.set_model_attn2_replace(replace, *key)
        return (clone,)


class CancelInGradientPass:
    """Presses Cancel (as the queue's Cancel button does) from inside the first gradient pass through the model, or
    (``fail``) raises there, as a broken patch or a kernel error would."""

    CATEGORY = "tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    GRAD_CALLS = []  # calls made with autograd on, after Cancel

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "what": (["cancel", "fail"],)}}

    def patch(self, model, what):
        import torch
        import comfy.model_management

        fired = []
        CancelInGradientPass.GRAD_CALLS.clear()

        def cancel(q, k, v, extra_options):
            if torch.is_grad_enabled():
                if fired:
                    CancelInGradientPass.GRAD_CALLS.append(extra_options["block"])
                elif what == "fail":
                    raise RuntimeError("a kernel failed in the gradient pass")
                else:
                    fired.append(True)
                    comfy.model_management.interrupt_current_processing(True)
            return replace(q, k, v, extra_options)

        clone = OtherPackAttention().patch(model, "block_index")[0]
        for key in list(clone.model_options["transformer_options"]["patches_replace"]["attn2"]):
            clone.set_model_attn2_replace(cancel, *key)
        return (clone,)


NODE_CLASS_MAPPINGS = {"OtherPackAttention": OtherPackAttention, "CancelInGradientPass": CancelInGradientPass}
'''


def _write_other_pack():
    """A second custom node pack in custom_nodes/, to check that attnkit works beside what other packs patch."""
    with open(os.path.join(BASE, "custom_nodes", "other_attention_pack.py"), "w", encoding="utf-8") as f:
        f.write(OTHER_PACK)


def _init_weights(module, seed: int):
    """Deterministic random weights: matrices and kernels ~ N(0, 1/fan_in), norm scales 1, biases 0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = max(int(np.prod(p.shape[1:])), 1)
                p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def checkpoint(kind: str = "sd15") -> str:
    """The name, in ComfyUI's ``checkpoints`` folder, of a test checkpoint (``"sd15"`` or ``"sd2"``, see
    :data:`CHECKPOINTS`); built with ComfyUI's own model classes and written as ComfyUI's CheckpointSave writes one
    (``state_dict_for_saving``), kept in the cache (fp16)."""
    boot()
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.model_management
    import comfy.sd
    import comfy.supported_models
    import comfy.utils
    import folder_paths

    name, config_name, unet = CHECKPOINTS[kind]
    folder = os.path.join(CACHE, "checkpoints")
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        config = getattr(comfy.supported_models, config_name)(dict(unet))
        model = config.get_model({}, "model.diffusion_model.", device=torch.device("cpu"))
        model.diffusion_model.to(torch.float32)
        _init_weights(model.diffusion_model, 0)
        clip = comfy.sd.CLIP(config.clip_target())
        _init_weights(clip.cond_stage_model, 1)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=VAE, embed_dim=4)
        _init_weights(vae, 2)
        sd = model.state_dict_for_saving(clip.get_sd(), vae.state_dict(), None)
        sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        tmp = path + ".tmp"
        comfy.utils.save_torch_file(sd, tmp)
        os.replace(tmp, path)
        del model, clip, vae, sd
        comfy.model_management.soft_empty_cache()
    if folder not in folder_paths.get_folder_paths("checkpoints"):
        folder_paths.add_model_folder_path("checkpoints", folder)
    return name


@dataclass
class Result:
    """What one queued graph did."""

    ok: bool
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)  # node id -> uint8 HxWx3 images
    error: dict | None = None  # ComfyUI's execution_error message (node_id, node_type, exception_message, ...)
    validation: dict | None = None  # validate_prompt's error and node_errors when the graph was refused
    messages: list = field(default_factory=list)
    peak_rss: int = 0  # bytes, this process's high-water mark during the run

    def image(self, node="save") -> np.ndarray:
        return self.images[node][0]


class Executor:
    """One ComfyUI prompt worker (``main.py``'s ``prompt_worker``): its caches persist between queued graphs, as
    in a running ComfyUI."""

    def __init__(self):
        _, execution = boot()
        self.server = Messages()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)

    def run(self, graph: dict, measure_memory: bool = False) -> Result:
        _, execution = boot()
        import folder_paths
        from PIL import Image

        graph = copy.deepcopy(graph)
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
        if not valid[0]:
            return Result(False, validation={"error": valid[1], "node_errors": valid[3]})
        if measure_memory:
            _reset_peak_rss()
        self.server.last_prompt_id = prompt_id
        self.executor.execute(graph, prompt_id, {"client_id": "attnkit-tests"}, valid[2])
        peak = _peak_rss() if measure_memory else 0
        messages = list(self.executor.status_messages)
        error = next((d for e, d in messages if e == "execution_error"), None)
        images = {}
        for node_id, out in (self.executor.history_result or {}).get("outputs", {}).items():
            for item in out.get("images", []):
                folder = folder_paths.get_directory_by_type(item["type"])
                with Image.open(os.path.join(folder, item["subfolder"], item["filename"])) as im:
                    images.setdefault(node_id, []).append(np.asarray(im.convert("RGB")))
        return Result(self.executor.success and error is None, images, error, None, messages, peak)


    def output(self, node_id: str, slot: int = 0):
        """A node's output of the latest run that executed it, from the executor's output cache."""
        cached = self.executor.caches.outputs.get(node_id)
        if cached is None:
            raise KeyError(f"node {node_id} has no cached output")
        outputs = getattr(cached, "outputs", cached)
        return outputs[slot][0]


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        logging.warning("cannot reset the peak RSS (no /proc/self/clear_refs): memory figures include earlier work")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- graphs (API format)
PROMPT = "a red car and a white sheep"


def base_graph(*, prompt=PROMPT, negative="", seed=0, steps=4, cfg=7.5, sampler="euler", scheduler="normal",
               width=128, height=128, batch=1, words_prompt=None, words="car, sheep", save=True,
               model="sd15") -> dict:
    """Checkpoint -> CLIP Text Encode (+/-) -> Empty Latent -> KSampler -> VAE Decode -> Save Image, plus an
    AttnKit Words node (not wired to anything yet: :func:`with_method` wires it)."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint(model)}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
    }
    if save:
        g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "attnkit_test"}}
    if words is not None:
        g["words"] = {"class_type": "AttnKitWords",
                      "inputs": {"clip": ["ckpt", 1], "text": prompt if words_prompt is None else words_prompt,
                                 "words": words}}
    return g


def node_defaults(class_type: str) -> dict:
    """The widget defaults of a node, read from its INPUT_TYPES as ComfyUI's frontend fills a new node."""
    nodes, _ = boot()
    spec = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = {}
    for name, value in {**spec.get("required", {}), **spec.get("optional", {})}.items():
        kind = value[0]
        options = value[1] if len(value) > 1 else {}
        if isinstance(kind, list):
            out[name] = options.get("default", kind[0])
        elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
            out[name] = options.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}[kind])
    return out


def with_method(g: dict, class_type: str, node_id: str = "attnkit", model_from=("ckpt", 0), **values) -> dict:
    """Insert an AttnKit Apply node between ``model_from`` and the KSampler."""
    g = copy.deepcopy(g)
    inputs = {**node_defaults(class_type), **values, "model": list(model_from)}
    if "targets" in _inputs_of(class_type):
        inputs["targets"] = ["words", 0]
    g[node_id] = {"class_type": class_type, "inputs": inputs}
    g["sampler"]["inputs"]["model"] = [node_id, 0]
    return g


def _inputs_of(class_type: str) -> dict:
    nodes, _ = boot()
    return nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES().get("required", {})


def load_workflow(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
