"""The lab: a small text-to-image model of a synthetic shapes world, trained here, and the measures of what each
method fixes on it.

- :mod:`.world`: the data (scenes of one or two coloured shapes on grey, their captions, held-out pairs);
- :mod:`.detector`: a deterministic reader of the pictures (which coloured shapes, where);
- :mod:`.model`: the model, real diffusers classes and the real CLIP tokenizer, as a ``StableDiffusionPipeline``;
- :mod:`.train`: training (the autoencoder, then the UNet with the text encoder), checkpointed and resumable.
"""
