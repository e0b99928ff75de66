"""Training the shapes model: the autoencoder first, then the UNet with the text encoder, then their grounding,
checkpointed and resumable.

Every batch is drawn from a generator seeded by ``(seed, stage, step)``, so a run that stops and resumes sees the
same data as one that never stopped. A checkpoint (``checkpoint.pt`` in the run folder, written whole or not at all)
holds the models, the optimiser, the moving averages and the step; ``train`` picks it up by itself.

Every stage warms the learning rate up over 100 steps, then decays it along a cosine to a tenth, and clips gradients
at norm 1. Stage 1 (``vae``): MSE reconstruction with a small KL term. Then the latents' scale is measured (the
inverse of their standard deviation, as Stable Diffusion's ``scaling_factor``). Stage 2 (``unet``): epsilon
prediction under DDPM's schedule (Stable Diffusion's scaled-linear betas), min-SNR-5 weighting, 10 % empty captions
(for classifier-free guidance), AdamW, an exponential moving average of the weights (what is exported). Stage 3
(``ground``): the same objective from the moving averages of stage 2, plus TokenCompose's token grounding loss (Wang
et al., CVPR 2024): each colour and shape word's cross-attention, in every cross-attention layer, is pulled onto its
object's area, ``(1 - mass on the object / mass on the picture)^2``. Without it a model this small reads its caption
from the padding tokens (they took 76.5 % of the cross-attention mass after stage 2) and its word maps stay flat.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AttnKitError, check_stop
from .model import CONFIG, build
from .world import Scene, masks, random_scene, render

STAGES = ("vae", "unet", "ground", "done")


@dataclass
class TrainConfig:
    """Settings of a training run (kept in its checkpoint; a resumed run keeps the first run's)."""

    vae_steps: int = 1000
    unet_steps: int = 4500
    batch: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    ground_steps: int = 1500
    ground_lr: float = 2e-4
    ground_weight: float = 0.1
    kl_weight: float = 1e-6
    ema: float = 0.999
    min_snr: float = 5.0
    empty_caption: float = 0.1
    save_every: int = 250
    seed: int = 0


def scenes(config: TrainConfig, stage: str, step: int) -> list[Scene]:
    """The scenes of a batch, the same for the same ``(seed, stage, step)``."""
    rng = np.random.default_rng([config.seed, STAGES.index(stage), step])
    return [random_scene(rng) for _ in range(config.batch)]


def batch(config: TrainConfig, stage: str, step: int) -> tuple[torch.Tensor, list[str]]:
    """``(B, 3, 64, 64)`` pictures in [-1, 1] and their captions, the same for the same ``(seed, stage, step)``."""
    drawn = scenes(config, stage, step)
    return pictures_of(drawn), [s.caption for s in drawn]


def pictures_of(drawn: list[Scene]) -> torch.Tensor:
    """``(B, 3, 64, 64)`` renderings of ``drawn`` in [-1, 1]."""
    pictures = np.stack([render(s) for s in drawn]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(pictures).permute(0, 3, 1, 2)


def grounding_targets(drawn: list[Scene], kept: list[bool], size: int) -> torch.Tensor:
    """``(B, 77, size * size)``: for each colour and shape word of a kept caption, its object's area (the share of
    each cell it covers); zero rows for the other tokens. A caption ``"a red circle and a blue square"`` puts thing
    ``i``'s colour at token ``4 i + 2`` and its shape at ``4 i + 3`` (each word is one token, after the start)."""
    targets = torch.zeros(len(drawn), 77, size * size)
    for b, (scene, keep) in enumerate(zip(drawn, kept)):
        if not keep:
            continue
        for i, area in enumerate(masks(scene)):
            cells = torch.from_numpy(area.astype(np.float32))
            cells = F.adaptive_avg_pool2d(cells[None, None], size).flatten()
            targets[b, 4 * i + 2] = targets[b, 4 * i + 3] = cells
    return targets


class _KeptCrossAttention:
    """Diffusers' plain attention for a cross-attention layer that also keeps its probabilities (head mean,
    ``(B, HW, tokens)``, with their gradients) for the grounding loss."""

    def __init__(self, kept: list):
        self.kept = kept

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch_size, cells, _ = hidden_states.shape
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)
        self.kept.append(probs.view(batch_size, attn.heads, cells, -1).mean(dim=1))
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def grounding_loss(kept: list[torch.Tensor], drawn: list[Scene], kept_rows: list[bool]) -> torch.Tensor:
    """TokenCompose's token loss, averaged over the grounded words and the layers: ``(1 - share on the object)^2``."""
    losses, targets = [], {}
    for probs in kept:
        size = int(math.isqrt(probs.shape[1]))
        if size not in targets:
            targets[size] = grounding_targets(drawn, kept_rows, size)
        target = targets[size]  # (B, 77, HW)
        words = target.sum(dim=2) > 0  # (B, 77)
        if not words.any():
            continue
        attention = probs.transpose(1, 2)  # (B, 77, HW)
        share = (attention * target).sum(dim=2) / attention.sum(dim=2).clamp_min(1e-12)
        losses.append(((1 - share[words]) ** 2).mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


class Trainer:
    """One training run in ``folder``: fresh, or resumed from its checkpoint."""

    def __init__(self, folder: str | os.PathLike, config: TrainConfig | None = None):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pipe = build()
        self.stage, self.step = "vae", 0
        path = self.folder / "checkpoint.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            self.config = TrainConfig(**saved["config"])
            self._restore(saved)
        else:
            self.config = config or TrainConfig()
            self._start_stage("vae")

    # --------------------------------------------------------------------------------------------- state
    def _start_stage(self, stage: str) -> None:
        self.stage, self.step = stage, 0
        pipe = self.pipe
        if stage == "vae":
            self.optimiser = torch.optim.Adam(pipe.vae.parameters(), lr=self.config.vae_lr)
            self.ema = None
        elif stage in ("unet", "ground"):
            if stage == "ground" and getattr(self, "ema", None) is not None:  # go on from what stage 2 exports
                self.pipe.unet.load_state_dict(self.ema["unet"])
                self.pipe.text_encoder.load_state_dict(self.ema["text_encoder"])
            embedding = pipe.text_encoder.get_input_embeddings().weight
            others = [p for p in pipe.text_encoder.parameters() if p is not embedding]
            self.optimiser = torch.optim.AdamW([
                {"params": list(pipe.unet.parameters()) + others},
                {"params": [embedding], "weight_decay": 0.0},  # rows no caption uses stay as built
            ], lr=self.config.unet_lr if stage == "unet" else self.config.ground_lr)
            self.ema = {"unet": copy.deepcopy(pipe.unet.state_dict()),
                        "text_encoder": copy.deepcopy(pipe.text_encoder.state_dict())}
        else:  # done: no optimiser; the moving averages stay (or come from the checkpoint)
            self.optimiser, self.ema = None, getattr(self, "ema", None)

    def _restore(self, saved: dict) -> None:
        pipe = self.pipe
        pipe.vae.load_state_dict(saved["vae"])
        pipe.unet.load_state_dict(saved["unet"])
        pipe.text_encoder.load_state_dict(saved["text_encoder"])
        if saved.get("scaling_factor") is not None:
            pipe.vae.register_to_config(scaling_factor=saved["scaling_factor"])
        stage, step = saved["stage"], saved["step"]
        self._start_stage(stage)
        self.step = step
        if saved.get("optimiser") is not None and self.optimiser is not None:
            self.optimiser.load_state_dict(saved["optimiser"])
        if saved.get("ema") is not None:
            self.ema = saved["ema"]

    def _trim_log(self) -> None:
        """Drop the log lines of steps after the checkpoint (a run that stopped between saves logged them; the resumed
        run logs them again)."""
        path = self.folder / "log.jsonl"
        if not path.is_file():
            return
        here = STAGES.index(self.stage)
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                stage = STAGES.index(row["stage"])
            except (ValueError, KeyError):
                continue
            if stage < here or (stage == here and row["step"] <= self.step):
                kept.append(line)
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(temporary, path)

    def save(self) -> Path:
        pipe = self.pipe
        data = {"config": asdict(self.config), "stage": self.stage, "step": self.step,
                "vae": pipe.vae.state_dict(), "unet": pipe.unet.state_dict(),
                "text_encoder": pipe.text_encoder.state_dict(), "scaling_factor": pipe.vae.config.scaling_factor,
                "optimiser": self.optimiser.state_dict() if self.optimiser is not None else None, "ema": self.ema}
        path = self.folder / "checkpoint.pt"
        temporary = path.with_suffix(".tmp")
        torch.save(data, temporary)
        os.replace(temporary, path)
        return path

    # -------------------------------------------------------------------------------------------- steps
    def _set_lr(self, base: float, total: int) -> float:
        """The learning rate of this step: a 100-step warm-up, then a cosine decay to a tenth (a function of the
        step alone, so a resumed run follows the same schedule)."""
        warm = min(1.0, (self.step + 1) / 100)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(self.step / max(total, 1), 1.0)))
        lr = base * warm * cosine
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        return lr

    def vae_step(self) -> dict:
        lr = self._set_lr(self.config.vae_lr, self.config.vae_steps)
        pictures, _ = batch(self.config, "vae", self.step)
        vae = self.pipe.vae.train()
        posterior = vae.encode(pictures).latent_dist
        sample = posterior.sample(generator=torch.Generator().manual_seed(self.config.seed * 100003 + self.step))
        reconstruction = vae.decode(sample).sample
        mse = F.mse_loss(reconstruction, pictures)
        loss = mse + self.config.kl_weight * posterior.kl().mean()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)  # one bad batch must not undo the run (it did at a
        self.optimiser.step()                                   # constant 1e-3 without clipping)
        psnr = 10 * math.log10(4.0 / max(float(mse.detach()), 1e-12))  # pictures span [-1, 1]: peak-to-peak 2
        return {"loss": float(loss.detach()), "psnr": psnr, "lr": lr}

    @torch.no_grad()
    def measure_scale(self) -> float:
        """``1 / std`` of the latents of 8 batches: Stable Diffusion's ``scaling_factor`` for this autoencoder."""
        vae = self.pipe.vae.eval()
        latents = [vae.encode(batch(self.config, "vae", 10**6 + i)[0]).latent_dist.mean for i in range(8)]
        return float(1.0 / torch.cat(latents).std())

    def unet_step(self) -> dict:
        """One step of stage 2 (``unet``) or 3 (``ground``: the same, plus the grounding loss)."""
        pipe, config = self.pipe, self.config
        ground = self.stage == "ground"
        if ground:
            lr = self._set_lr(config.ground_lr, config.ground_steps)
        else:
            lr = self._set_lr(config.unet_lr, config.unet_steps)
        drawn = scenes(config, self.stage, self.step)
        pictures = pictures_of(drawn)
        rng = np.random.default_rng([config.seed, 7 if not ground else 8, self.step])
        empty = [bool(rng.random() < config.empty_caption) for _ in drawn]
        captions = ["" if e else s.caption for s, e in zip(drawn, empty)]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        with torch.no_grad():
            latents = pipe.vae.eval().encode(pictures).latent_dist.sample(generator=generator)
            latents = latents * pipe.vae.config.scaling_factor
        tokens = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        text = pipe.text_encoder.train()(tokens.input_ids)[0]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, CONFIG["schedule"]["num_train_timesteps"], (latents.shape[0],),
                                  generator=generator)
        noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
        kept: list[torch.Tensor] = []
        layers = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")] if ground else []
        before = [m.processor for m in layers]
        try:
            for layer in layers:
                layer.set_processor(_KeptCrossAttention(kept))
            predicted = pipe.unet.train()(noisy, timesteps, encoder_hidden_states=text).sample
        finally:
            for layer, processor in zip(layers, before):
                layer.set_processor(processor)
        alphas = pipe.scheduler.alphas_cumprod[timesteps]
        snr = alphas / (1 - alphas)
        weight = torch.clamp(snr, max=config.min_snr) / snr  # min-SNR-gamma for epsilon prediction
        per_image = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
        diffusion = (weight * per_image).mean()
        grounding = grounding_loss(kept, drawn, [not e for e in empty]) if ground else None
        loss = diffusion if grounding is None else diffusion + config.ground_weight * grounding
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimiser.param_groups for p in g["params"]], 1.0)
        self.optimiser.step()
        self._update_ema()
        record = {"loss": float(diffusion.detach()), "lr": lr}
        if grounding is not None:
            record["grounding"] = float(grounding.detach())
        return record

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        for name in ("unet", "text_encoder"):
            live = getattr(self.pipe, name).state_dict()
            for key, value in self.ema[name].items():
                if value.is_floating_point():
                    value.mul_(decay).add_(live[key], alpha=1 - decay)

    def run(self, on_log: Callable[[dict], None] | None = None, stop=None, max_steps: int | None = None) -> None:
        """Train until done (or ``max_steps`` more steps, or ``stop``), saving every ``save_every`` steps."""
        self._trim_log()  # here, not on loading: reading a run (to export or evaluate it) must leave its log alone
        log = (self.folder / "log.jsonl").open("a", encoding="utf-8")
        done = 0
        try:
            while self.stage != "done" and (max_steps is None or done < max_steps):
                check_stop(stop)
                t0 = time.perf_counter()
                total = {"vae": self.config.vae_steps, "unet": self.config.unet_steps,
                         "ground": self.config.ground_steps}[self.stage]
                if self.step >= total:
                    if self.stage == "vae":
                        self.pipe.vae.register_to_config(scaling_factor=self.measure_scale())
                    self._start_stage(STAGES[STAGES.index(self.stage) + 1])
                    self.save()
                    continue
                record = self.vae_step() if self.stage == "vae" else self.unet_step()
                self.step += 1
                done += 1
                record.update(stage=self.stage, step=self.step, total=total, s=time.perf_counter() - t0)
                log.write(json.dumps(record) + "\n")
                log.flush()  # a watcher sees each step; a killed run loses none it logged
                if on_log is not None:
                    on_log(record)
                if self.step % self.config.save_every == 0:
                    self.save()
            self.save()
        finally:
            log.close()

    def pipeline(self, ema: bool = True):
        """The trained pipeline (the moving averages of the UNet and the text encoder when there are some)."""
        pipe = copy.deepcopy(self.pipe)
        if ema and self.ema is not None:
            pipe.unet.load_state_dict(self.ema["unet"])
            pipe.text_encoder.load_state_dict(self.ema["text_encoder"])
        for part in (pipe.vae, pipe.unet, pipe.text_encoder):
            part.eval()
        return pipe


def train(folder, config: TrainConfig | None = None, max_steps: int | None = None, on_log=None, stop=None) -> Trainer:
    """Train (or go on training) the shapes model in ``folder``; returns the trainer."""
    if config is not None and (Path(folder).expanduser() / "checkpoint.pt").is_file():
        saved = torch.load(Path(folder).expanduser() / "checkpoint.pt", map_location="cpu", weights_only=False)
        if saved["config"] != asdict(config):
            raise AttnKitError(f"{folder} holds a run with other settings; resume it without settings or pick "
                               "another folder")
    trainer = Trainer(folder, config)
    trainer.run(on_log=on_log, stop=stop, max_steps=max_steps)
    return trainer
