"""AnyDoorModule: a thin LightningModule over the plain components in ``models/components``.

Trained: ID projector (switch), ControlNet (except its silenced conv_in), U-Net decoder half.
Frozen and rebuilt from their sources on load: DINOv2, VAE / space-to-depth, U-Net encoder half.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from lightning.pytorch import LightningModule

from models.builders import build_first_stage, build_unet, seeded_init
from models.components.denoiser import AnyDoorDenoiser
from models.components.detail_extractor import HINT_CHANNELS, build_detail_extractor
from models.components.ema import ParameterEMA
from models.components.id_encoder import IDEncoder


def psnr_in_boxes(pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) inside each box; images in [-1, 1]; boxes (x1, y1, x2, y2) exclusive."""
    out = []
    for p, t, (x1, y1, x2, y2) in zip(pred, target, boxes.tolist()):
        diff = (p[:, y1:y2, x1:x2].float() - t[:, y1:y2, x1:x2].float()) / 2.0
        mse = diff.pow(2).mean().clamp_min(1e-10)
        out.append(-10.0 * torch.log10(mse))
    return torch.stack(out)


class AnyDoorModule(LightningModule):
    def __init__(
        self,
        sd_path: Optional[str] = None,
        unet_config: Optional[dict[str, Any]] = None,
        first_stage: Optional[dict[str, Any]] = None,
        id_encoder: Optional[dict[str, Any]] = None,
        hint_channels: list[int] = list(HINT_CHANNELS),
        zero_hint_conv: bool = True,
        init_seed: int = 0,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        rescale_betas_zero_snr: bool = False,
        train_projector: bool = True,
        cfg_drop_prob: float = 0.0,
        lr: float = 1e-5,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        use_8bit_adam: bool = False,
        min_snr_gamma: Optional[float] = None,
        ema_decay: Optional[float] = None,
        gradient_checkpointing: bool = False,
        sample_steps: int = 25,
        timestep_spacing: str = "trailing",
        guidance_scale: float = 1.0,
        val_timesteps: list[int] = [100, 300, 500, 700, 900],
        val_sample_steps: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if not 0.0 <= cfg_drop_prob <= 1.0:
            raise ValueError(f"cfg_drop_prob must be in [0, 1], got {cfg_drop_prob}")
        with seeded_init(init_seed):
            unet = build_unet(sd_path, unet_config)
            self.first_stage = build_first_stage(sd_path, first_stage)
            id_kwargs = dict(id_encoder or {})
            id_kwargs.setdefault("out_dim", unet.config.cross_attention_dim)
            id_kwargs["train_projector"] = train_projector
            self.id_encoder = IDEncoder(**id_kwargs)
            controlnet = build_detail_extractor(unet, hint_channels, zero_hint_conv=zero_hint_conv)
        hint_factor = 2 ** (len(hint_channels) - 1)
        if hint_factor != self.first_stage.factor:
            raise ValueError(f"hint embedding downsamples by {hint_factor} but the first stage by "
                             f"{self.first_stage.factor}; they must match")
        self.first_stage.requires_grad_(False)
        self.denoiser = AnyDoorDenoiser(unet, controlnet)
        self.denoiser.freeze_unet_encoder()
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler(**self.scheduler_config())
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.ema: Optional[ParameterEMA] = None
        if ema_decay:
            self.ema = ParameterEMA(self.trainable_parameters(), ema_decay)
        self._generator: Optional[torch.Generator] = None

    # ----------------------------------------------------------------- building blocks
    def scheduler_config(self) -> dict[str, Any]:
        h = self.hparams
        return dict(num_train_timesteps=h.num_train_timesteps, beta_start=h.beta_start, beta_end=h.beta_end,
                    beta_schedule=h.beta_schedule, prediction_type=h.prediction_type, clip_sample=False,
                    rescale_betas_zero_snr=h.rescale_betas_zero_snr, timestep_spacing=h.timestep_spacing)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device).manual_seed(
                self.hparams.seed + 1000 * self.global_rank)
        return self._generator

    def id_tokens(self, reference: torch.Tensor, drop: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.id_encoder(reference)
        if drop is not None and bool(drop.any()):
            uncond = self.id_encoder.unconditional_tokens(reference.shape[0], reference.device)
            tokens = torch.where(drop.view(-1, 1, 1), uncond.to(tokens.dtype), tokens)
        return tokens

    # ----------------------------------------------------------------- training
    def diffusion_loss(self, batch: dict[str, torch.Tensor], timesteps: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        target_img = batch["target"]
        bsz = target_img.shape[0]
        latents = self.first_stage.encode(target_img, generator=gen)
        if timesteps is None:
            timesteps = batch.get("timesteps")
        if timesteps is None:
            timesteps = torch.randint(0, self.hparams.num_train_timesteps, (bsz,), device=self.device,
                                      generator=gen)
        timesteps = timesteps.to(self.device).long()
        drop = None
        if self.training and self.hparams.cfg_drop_prob > 0:
            drop = torch.rand(bsz, device=self.device, generator=gen) < self.hparams.cfg_drop_prob
        tokens = self.id_tokens(batch["reference"], drop)
        noise = torch.randn(latents.shape, device=self.device, generator=gen, dtype=latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.hparams.prediction_type == "epsilon":
            goal = noise
        else:
            goal = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = self.denoiser(noisy, timesteps, tokens, batch["collage"])
        per_sample = F.mse_loss(pred.float(), goal.float(), reduction="none").mean(dim=(1, 2, 3))
        gamma = self.hparams.min_snr_gamma
        if gamma:
            alphas = self.noise_scheduler.alphas_cumprod.to(self.device)[timesteps]
            snr = alphas / (1 - alphas).clamp_min(1e-8)
            weight = snr.clamp(max=gamma) / (snr if self.hparams.prediction_type == "epsilon" else snr + 1)
            per_sample = per_sample * weight
        return per_sample.mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update()

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        bsz = batch["target"].shape[0]
        gen = torch.Generator(device=self.device).manual_seed(12345 + batch_idx)
        with self.maybe_ema():
            losses = [self.diffusion_loss(batch, torch.full((bsz,), t, device=self.device), gen)
                      for t in self.hparams.val_timesteps]
            self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=bsz, sync_dist=True)
            if self.hparams.val_sample_steps:
                images = self.sample(batch, self.hparams.val_sample_steps, generator=gen, use_ema=False)
                psnr = psnr_in_boxes(images, batch["target"], batch["box"]).mean()
                self.log("val/psnr_box", psnr, prog_bar=True, batch_size=bsz, sync_dist=True)

    def maybe_ema(self):
        from contextlib import nullcontext

        return self.ema.swapped_in() if self.ema is not None else nullcontext()

    # ----------------------------------------------------------------- sampling
    def make_sampler(self, num_steps: int) -> DDIMScheduler:
        sched = DDIMScheduler(**self.scheduler_config(), set_alpha_to_one=False)
        sched.set_timesteps(num_steps, device=self.device)
        return sched

    @torch.no_grad()
    def sample(self, batch: dict[str, torch.Tensor], num_steps: Optional[int] = None,
               guidance_scale: Optional[float] = None, generator: Optional[torch.Generator] = None,
               use_ema: bool = True) -> torch.Tensor:
        """DDIM sampling of the target crop, outside-box pixels taken from nothing but the model."""
        from contextlib import nullcontext

        num_steps = num_steps or self.hparams.sample_steps
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        ctx = self.ema.swapped_in() if (use_ema and self.ema is not None) else nullcontext()
        with ctx:
            collage = batch["collage"].to(self.device)
            bsz, _, h, w = collage.shape
            f = self.first_stage.factor
            tokens = self.id_tokens(batch["reference"].to(self.device))
            uncond = self.id_encoder.unconditional_tokens(bsz, self.device) if scale != 1.0 else None
            sched = self.make_sampler(num_steps)
            shape = (bsz, self.first_stage.latent_channels, h // f, w // f)
            x = torch.randn(shape, device=self.device, generator=generator) * sched.init_noise_sigma
            for t in sched.timesteps:
                ts = t.expand(bsz).to(self.device)
                if uncond is not None:
                    both = self.denoiser(torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([uncond, tokens]),
                                         torch.cat([collage, collage]))
                    out_u, out_c = both.chunk(2)
                    out = out_u + scale * (out_c - out_u)
                else:
                    out = self.denoiser(x, ts, tokens, collage)
                x = sched.step(out, t, x, generator=generator).prev_sample
            return self.first_stage.decode(x).clamp(-1, 1)

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        params = list(self.trainable_parameters().values())
        h = self.hparams
        if h.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from err
            opt = bnb.optim.AdamW8bit(params, lr=h.lr, weight_decay=h.weight_decay, betas=tuple(h.betas))
        else:
            opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay, betas=tuple(h.betas))
        if not h.warmup_steps:
            return opt
        warm = max(1, h.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_parameters())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        if self._generator is not None:
            checkpoint["generator_state"] = self._generator.get_state().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_parameters())
        missing = keep - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights, e.g. {sorted(missing)[:5]}")
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        if "generator_state" in checkpoint:
            self._generator = torch.Generator(device="cpu")
            self._generator.set_state(checkpoint["generator_state"])

    def trainable_state_dict(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """Trainable weights (EMA if kept) as contiguous CPU tensors, for safetensors export."""
        if use_ema and self.ema is not None:
            return {k: v.detach().contiguous().cpu() for k, v in self.ema.shadow.items()}
        return {k: p.detach().contiguous().cpu() for k, p in self.trainable_parameters().items()}

    def save_pretrained(self, directory: str, use_ema: bool = True) -> None:
        """Write the pretrained layout of docs/design.md (every part, frozen ones included)."""
        from contextlib import nullcontext
        from pathlib import Path

        from models.components.first_stage import saved_class_name
        from models.pipeline import write_model_index

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)

        ctx = self.ema.swapped_in() if (use_ema and self.ema is not None) else nullcontext()
        with ctx:
            self.denoiser.unet.save_pretrained(str(out / "unet"))
            self.denoiser.controlnet.save_pretrained(str(out / "controlnet"))
            self.first_stage.save_pretrained(out / "vae")
            self.id_encoder.save_pretrained(out / "id_encoder")
        DDIMScheduler(**self.scheduler_config(), set_alpha_to_one=False).save_pretrained(str(out / "scheduler"))
        write_model_index(out, saved_class_name(self.first_stage), "DDIMScheduler", sampling={  # what this recipe samples with
            "sample_scheduler": "ddim", "sample_steps": self.hparams.sample_steps,
            "guidance_scale": self.hparams.guidance_scale})
