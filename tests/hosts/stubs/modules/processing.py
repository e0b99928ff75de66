"""A1111 c8a5322d ``modules/processing.py``: the job object fields attnkit reads, and ``Processed``."""


class StableDiffusionProcessing:
    def __init__(self, sd_model=None, prompt="", negative_prompt="", steps=3, cfg_scale=7.5, seed=0, width=64,
                 height=64, batch_size=1, n_iter=1):
        self.sd_model = sd_model
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.width = width
        self.height = height
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.extra_generation_params = {}
        self.comments = {}
        self.task_args = {}  # SD.Next
        self.is_hr_pass = False
        self.prompts = [prompt] * batch_size
        self.script_args = []

    def comment(self, text):
        self.comments[text] = 1

    def sample(self, *args, **kwargs):  # replaced by the host simulation
        raise NotImplementedError


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class Processed:
    def __init__(self, p, images, infotexts=None):
        self.images = list(images)
        self.infotexts = list(infotexts or [])
        self.all_seeds = [p.seed] * len(self.images)
        self.index_of_first_image = 0
        self.comments = "\n".join(p.comments)
