"""ComfyUI ``comfy/sd.py``: ``CLIP`` (tokenize to 77-token chunks of ``(id, weight)``, encode)."""

import torch


class _SDTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


class _SD1Tokenizer:
    def __init__(self, tokenizer):
        self.clip_l = _SDTokenizer(tokenizer)


class CLIP:
    def __init__(self, pipe):
        self.pipe = pipe
        self.tokenizer = _SD1Tokenizer(pipe.tokenizer)

    def tokenize(self, text):
        from attnkit.hostkernel import strip_weights

        ids = self.pipe.tokenizer(strip_weights(text), padding="max_length", max_length=77, truncation=True)["input_ids"]
        return {"l": [[(i, 1.0) for i in ids]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        ids = torch.tensor([[t for t, _ in tokens["l"][0]]])
        with torch.no_grad():
            return self.pipe.text_encoder(ids)[0]
