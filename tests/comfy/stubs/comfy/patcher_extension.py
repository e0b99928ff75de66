"""ComfyUI ``comfy/patcher_extension.py``: wrapper types."""


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    SAMPLER_SAMPLE = "sampler_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


class WrapperExecutor:
    """Calls the wrappers outermost first; each gets the executor of the rest."""

    def __init__(self, original, wrappers, idx=0):
        self.original, self.wrappers, self.idx = original, wrappers, idx

    def __call__(self, *args, **kwargs):
        if self.idx >= len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](WrapperExecutor(self.original, self.wrappers, self.idx + 1), *args, **kwargs)
