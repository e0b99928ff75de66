"""ComfyUI ``comfy/model_patcher.py``: ``ModelPatcher`` clone and patch semantics."""

import copy


class ModelPatcher:
    def __init__(self, model, model_options=None):
        self.model = model
        self.model_options = model_options if model_options is not None else {"transformer_options": {}}
        self.wrappers = {}

    def clone(self):
        n = ModelPatcher(self.model, copy.deepcopy(self.model_options))
        n.wrappers = {t: {k: list(v) for k, v in keys.items()} for t, keys in self.wrappers.items()}
        return n

    def is_clone(self, other):
        return getattr(other, "model", None) is self.model

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {}).setdefault(name, []).append(patch)

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to.setdefault("patches_replace", {}).setdefault(name, {})[block] = patch

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def get_wrappers(self, wrapper_type):
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]
