"""Write example_workflows/: for each AttnKit node graph, a UI-format workflow (what ComfyUI's template browser and
"Load" read) and an API-format one (what POST /prompt takes), both from one description of the graph.

Run: python tools/comfy_workflows.py   (a test checks the files are what this writes)
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "example_workflows")

#: ComfyUI's core nodes used here (nodes.py): inputs in widget order as (name, type); links have upper-case types
CORE = {
    "CheckpointLoaderSimple": {"inputs": [("ckpt_name", "COMBO")], "outputs": ["MODEL", "CLIP", "VAE"]},
    "CLIPTextEncode": {"inputs": [("text", "STRING"), ("clip", "CLIP")], "outputs": ["CONDITIONING"]},
    "EmptyLatentImage": {"inputs": [("width", "INT"), ("height", "INT"), ("batch_size", "INT")],
                         "outputs": ["LATENT"]},
    "KSampler": {"inputs": [("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"),
                            ("sampler_name", "COMBO"), ("scheduler", "COMBO"), ("positive", "CONDITIONING"),
                            ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("denoise", "FLOAT")],
                 "outputs": ["LATENT"]},
    "VAEDecode": {"inputs": [("samples", "LATENT"), ("vae", "VAE")], "outputs": ["IMAGE"]},
    "SaveImage": {"inputs": [("images", "IMAGE"), ("filename_prefix", "STRING")], "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE")], "outputs": []},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

PROMPT = "a red car and a white sheep"
WORDS = "car, sheep"
METHODS = {
    "observe": ("AttnKitApplyObserve", {}),
    "structured": ("AttnKitApplyStructured", {}),
    "attend_excite": ("AttnKitApplyAttendExcite", {}),
    "a_star": ("AttnKitApplyAStar", {}),
}


def schema(node_type, mappings):
    """``(inputs [(name, type)], outputs [type])`` of a node, from our mappings or the core table."""
    if node_type in CORE:
        return CORE[node_type]["inputs"], CORE[node_type]["outputs"]
    node = mappings[node_type]
    inputs = []
    for name, spec in node.INPUT_TYPES()["required"].items():
        kind = spec[0]
        inputs.append((name, "COMBO" if isinstance(kind, list) else kind))
    return inputs, list(node.RETURN_TYPES)


def output_names(node_type, mappings):
    """The output slot names ComfyUI's frontend shows: the node's RETURN_NAMES, or its output types where it
    declares none (ComfyUI's core loaders, encoders and samplers)."""
    if node_type in CORE:
        return list(CORE[node_type]["outputs"])
    node = mappings[node_type]
    return list(getattr(node, "RETURN_NAMES", None) or node.RETURN_TYPES)


def p2p_graph(mappings):
    """Prompt-to-Prompt: the node makes the MODEL, the two prompts' conditioning and a two-row latent; the sampler
    makes [source, edited]."""
    node = mappings["AttnKitPromptToPrompt"]
    inputs = {"model": (1, 0), "clip": (1, 1), "latent": (6, 0)}
    for name, spec in node.INPUT_TYPES()["required"].items():
        if name not in inputs:
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            inputs[name] = options.get("default", kind[0] if isinstance(kind, list) else None)
    return [
        (1, "CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "Load Checkpoint"),
        (3, "CLIPTextEncode", {"text": "", "clip": (1, 1)}, "Negative prompt"),
        (6, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, "Empty Latent Image"),
        (5, "AttnKitPromptToPrompt", inputs, "AttnKit Prompt-to-Prompt"),
        (7, "KSampler", {"model": (5, 0), "seed": 0, "steps": 50, "cfg": 7.5, "sampler_name": "ddim",
                         "scheduler": "ddim_uniform", "positive": (5, 1), "negative": (3, 0), "latent_image": (5, 2),
                         "denoise": 1.0}, "KSampler"),
        (8, "VAEDecode", {"samples": (7, 0), "vae": (1, 2)}, "VAE Decode"),
        (10, "SaveImage", {"images": (8, 0), "filename_prefix": "attnkit_p2p"}, "Save Image (source, edited)"),
    ]


def graph(method, mappings):
    """Nodes as ``[(id, type, {input: value or (node id, output index)}, title)]``."""
    if method == "prompt_to_prompt":
        return p2p_graph(mappings)
    apply_type, overrides = METHODS[method] if method != "preset" else ("AttnKitApplyPreset", {})
    nodes = [
        (1, "CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "Load Checkpoint"),
        (2, "CLIPTextEncode", {"text": PROMPT, "clip": (1, 1)}, "Positive prompt"),
        (3, "CLIPTextEncode", {"text": "", "clip": (1, 1)}, "Negative prompt"),
        (4, "AttnKitWords", {"clip": (1, 1), "text": PROMPT, "words": WORDS}, "AttnKit Words (same prompt text)"),
    ]
    if method == "preset":
        from attnkit.methods import Observe, StructuredGuidance
        from attnkit.presets import Preset

        code = Preset.from_methods([StructuredGuidance(), Observe()]).to_share_code()
        nodes.append((9, "AttnKitPreset", {"preset": code}, "AttnKit Preset (paste JSON or a share code)"))
        apply_inputs = {"model": (1, 0), "targets": (4, 0), "preset": (9, 0)}
    else:
        node = mappings[apply_type]
        apply_inputs = {"model": (1, 0), "targets": (4, 0)}
        for name, spec in node.INPUT_TYPES()["required"].items():
            if name in apply_inputs:
                continue
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            apply_inputs[name] = overrides.get(name, options.get("default", kind[0] if isinstance(kind, list) else None))
    nodes.append((5, apply_type, apply_inputs, f"AttnKit Apply {method}"))
    nodes += [
        (6, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, "Empty Latent Image"),
        (7, "KSampler", {"model": (5, 0), "seed": 0, "steps": 30, "cfg": 7.5, "sampler_name": "euler",
                         "scheduler": "normal", "positive": (2, 0), "negative": (3, 0), "latent_image": (6, 0),
                         "denoise": 1.0}, "KSampler"),
        (8, "VAEDecode", {"samples": (7, 0), "vae": (1, 2)}, "VAE Decode"),
        (10, "SaveImage", {"images": (8, 0), "filename_prefix": f"attnkit_{method}"}, "Save Image"),
    ]
    if method in ("observe", "preset"):
        nodes += [(11, "AttnKitAttentionMaps", {"maps": (5, 1), "images": (8, 0)}, "AttnKit Attention Maps"),
                  (12, "PreviewImage", {"images": (11, 0)}, "Heatmaps")]
    return nodes


def api_format(nodes):
    return {str(i): {"class_type": t, "inputs": {k: ([str(v[0]), v[1]] if isinstance(v, tuple) else v)
                                                  for k, v in inputs.items()}, "_meta": {"title": title}}
            for i, t, inputs, title in nodes}


def ui_format(nodes, mappings):
    links, out_links = [], {}
    order = {i: n for n, (i, *_rest) in enumerate(nodes)}
    ui_nodes = []
    for i, node_type, inputs, title in nodes:
        for name, value in inputs.items():
            if isinstance(value, tuple):
                link_id = len(links) + 1
                in_schema, _ = schema(node_type, mappings)
                slot = [n for n, _ in in_schema if n not in () and dict(in_schema)[n] not in WIDGET_TYPES].index(name)
                source_type = schema(next(t for j, t, *_ in nodes if j == value[0]), mappings)[1][value[1]]
                links.append([link_id, value[0], value[1], i, slot, source_type])
                out_links.setdefault((value[0], value[1]), []).append(link_id)
    for i, node_type, inputs, title in nodes:
        in_schema, outputs = schema(node_type, mappings)
        link_inputs = [(n, t) for n, t in in_schema if t not in WIDGET_TYPES]
        widgets = []
        for n, t in in_schema:
            if t in WIDGET_TYPES:
                widgets.append(inputs[n])
                if node_type == "KSampler" and n == "seed":
                    widgets.append("fixed")  # the seed's control_after_generate widget
        ui_inputs = []
        for n, t in link_inputs:
            link = next((lk[0] for lk in links if lk[3] == i and lk[4] == len(ui_inputs)), None)
            ui_inputs.append({"name": n, "type": t, "link": link})
        names = output_names(node_type, mappings)
        ui_outputs = [{"name": names[s], "type": t, "links": out_links.get((i, s), []), "slot_index": s}
                      for s, t in enumerate(outputs)]
        ui_nodes.append({"id": i, "type": node_type, "title": title, "pos": [60 + 330 * (order[i] % 4),
                                                                          80 + 260 * (order[i] // 4)],
                         "size": [300, 200], "flags": {}, "order": order[i], "mode": 0, "inputs": ui_inputs,
                         "outputs": ui_outputs, "properties": {"Node name for S&R": node_type},
                         "widgets_values": widgets})
    return {"last_node_id": max(i for i, *_ in nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def workflows(mappings) -> dict[str, dict]:
    """``{relative path: JSON}`` of every example workflow."""
    out = {}
    for method in (*METHODS, "preset", "prompt_to_prompt"):
        nodes = graph(method, mappings)
        out[f"attnkit_{method}.json"] = ui_format(nodes, mappings)
        out[f"api/attnkit_{method}.json"] = api_format(nodes)
    return out


def main():
    sys.path.insert(0, ROOT)
    import nodes as pack_nodes

    for path, data in workflows(pack_nodes.NODE_CLASS_MAPPINGS).items():
        target = os.path.join(OUT, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        print(target)


if __name__ == "__main__":
    main()
