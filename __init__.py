"""ComfyUI entry point: ComfyUI imports this folder as a custom node pack and reads the mappings below.

When ComfyUI is present they come from ``nodes/``; anywhere else (pytest, Python users of ``attnkit``) they stay
empty and nothing is imported, so this file costs nothing.
"""

import importlib.util

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

if __package__ and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
