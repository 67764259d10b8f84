"""AnyDoorModule: a thin LightningModule over the plain components in ``models/components``.

Trained: ID projector (switch), ControlNet (except its silenced conv_in), U-Net decoder half; or, with
``lora``, peft adapters on those and the ControlNet parts SD has no weights for (``models.components.lora``).
Frozen and rebuilt from their sources on load: DINOv2, VAE / space-to-depth, U-Net encoder half.
Scaling hooks: ``frozen_dtype`` (frozen parts stored in bf16/fp16), ``configure_model`` (FSDP2 under
Lightning's ``ModelParallelStrategy``); docs/training.md "Memory per GPU and scaling".
Sampling is the pipeline's: ``to_pipeline()`` wraps the live parts, so validation, sample grids,
evaluation and the export generate with the same code as ``anydoor generate``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.training_utils import EMAModel, compute_snr
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from models.builders import build_unet, build_vae, seeded_init
from models.components.denoiser import AnyDoorDenoiser, scene_latents
from models.components.detail_extractor import COLLAGE_EMBEDDING_CHANNELS, build_detail_extractor
from models.components.first_stage import encode_images, latent_factor
from models.components.id_encoder import IDEncoder
from models.components.lora import add_lora, cast_frozen, lora_settings, needs_plain_copy, plain_copy
from src.conditioning import DEFAULT_PREPROCESSING, Preprocessing
from src.packed import unpack_batch

# SD's DDPM schedule; ``noise_schedule`` entries replace these.
NOISE_SCHEDULE: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", prediction_type="epsilon",
                                      rescale_betas_zero_snr=False, timestep_spacing="trailing", clip_sample=False)
TIMESTEP_CALLBACK = "callbacks.FrequencyAwareTimesteps"
FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AnyDoorModule(LightningModule):
    """AnyDoor training: ControlNet + U-Net decoder (+ ID projector) learn to teleport a reference object.

    Args:
        sd_path: an SD-2.1-style diffusers folder (``unet/``, ``vae/``) to start from.
        unet_config: an inline ``UNet2DConditionModel`` config instead (the tiny model).
        vae: the first stage: ``{type: vae}`` (AutoencoderKL from ``sd_path/vae`` or ``path``) or
            ``{type: space_to_depth, factor: 4}``.
        id_encoder: ``IDEncoder`` arguments (``model_name``, ``vit_kwargs``, ``weights``, ``image_size``);
            ``out_dim`` defaults to the U-Net's cross-attention width.
        collage_embedding_channels: widths of the ControlNet's collage embedding; it downsamples by
            ``2 ** (len - 1)``, which must equal the first stage's factor.
        zero_init_collage_embedding: zero the embedding's last conv (the reference); false for a
            model trained from scratch (docs/training.md).
        init_seed: seed of every random init; frozen random parts are rebuilt from it, never stored.
        noise_schedule: diffusers scheduler config entries over SD's (``prediction_type``: ``epsilon``,
            ``v_prediction`` or ``sample``; ``rescale_betas_zero_snr``, ``timestep_spacing`` and
            ``set_alpha_to_one`` (a last step that returns the clean estimate) of the recommended DDIM
            sampler, ...).
        collage_residual: predict the clean latent as the collage's latent plus the U-Net's output
            (zero-init ``conv_out``, so training starts from the collage's pixel-exact scene); needs
            ``prediction_type: sample``. The tiny default's deviation from the authors (docs/training.md).
        train_unet_encoder: train the U-Net encoder too (a from-scratch model has nothing to keep there;
            the authors freeze SD's pretrained one, the default).
        uniform_timesteps: draw training timesteps uniformly when the batch has none; by default a
            batch without ``timesteps`` (no ``FrequencyAwareTimesteps`` callback) is an error.
        train_projector: train the ID projector too.
        cfg_drop_prob: share of references replaced by the black one (classifier-free guidance).
        optimizer / lr_scheduler: callables (LightningCLI ``class_path``/``init_args``); the scheduler
            steps every optimizer step.
        min_snr_gamma: min-SNR loss weighting (None: off).
        ema_decay: keep an EMA of the trained weights (sampled and exported when kept).
        gradient_checkpointing: on the U-Net and ControlNet.
        frozen_dtype: store the frozen parts (DINOv2, VAE, U-Net encoder, LoRA base weights) in
            ``bfloat16``/``float16``; trained weights stay fp32. Needs a ``*-mixed`` trainer precision.
        lora: ``{rank, alpha, dropout, targets}``: train peft LoRA adapters instead of the ControlNet
            and U-Net decoder weights (``models.components.lora``); exports merge them.
        sample_steps / guidance_scale: the recommended sampler (DDIM) written into exports.
        val_timesteps: timesteps of the validation loss; val_sample_steps: also sample and log
            ``val/psnr_box`` with that many steps (0: off).
        seed: seed of the training noise (per rank).
    """

    def __init__(
        self,
        sd_path: Optional[str] = None,
        unet_config: Optional[dict[str, Any]] = None,
        vae: Optional[dict[str, Any]] = None,
        id_encoder: Optional[dict[str, Any]] = None,
        collage_embedding_channels: list[int] = list(COLLAGE_EMBEDDING_CHANNELS),
        zero_init_collage_embedding: bool = True,
        init_seed: int = 0,
        noise_schedule: Optional[dict[str, Any]] = None,
        uniform_timesteps: bool = False,
        collage_residual: bool = False,
        train_unet_encoder: bool = False,
        train_projector: bool = True,
        cfg_drop_prob: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        min_snr_gamma: Optional[float] = None,
        ema_decay: Optional[float] = None,
        gradient_checkpointing: bool = False,
        frozen_dtype: Optional[str] = None,
        lora: Optional[dict[str, Any]] = None,
        sample_steps: int = 25,
        guidance_scale: float = 1.0,
        val_timesteps: list[int] = [100, 300, 500, 700, 900],
        val_sample_steps: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        if not 0.0 <= cfg_drop_prob <= 1.0:
            raise ValueError(f"cfg_drop_prob must be in [0, 1], got {cfg_drop_prob}")
        if frozen_dtype is not None and frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype must be one of {sorted(FROZEN_DTYPES)}, got {frozen_dtype!r}")
        lora = lora_settings(lora) if lora is not None else None
        schedule = {**NOISE_SCHEDULE, **(noise_schedule or {})}
        # DDIM's last step lands on alpha 1 (the clean estimate) or, as SD, on alphas_cumprod[0]
        self.final_alpha_one = bool(schedule.pop("set_alpha_to_one", False))
        with torch.device("cpu"):  # the schedule's tables stay CPU tensors whatever device builds the module
            self.noise_scheduler = DDPMScheduler(**schedule)
        prediction = self.noise_scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction!r}")
        if collage_residual and prediction != "sample":
            raise ValueError(f"collage_residual needs noise_schedule.prediction_type 'sample' (the clean latent), "
                             f"got {prediction!r}")
        with seeded_init(init_seed):
            unet = build_unet(sd_path, unet_config)
            self.vae = build_vae(sd_path, vae)
            id_kwargs = {"out_dim": unet.config.cross_attention_dim, **(id_encoder or {}), "train_projector": train_projector}
            self.id_encoder = IDEncoder(**id_kwargs)
            controlnet = build_detail_extractor(unet, collage_embedding_channels,
                                                zero_init_embedding=zero_init_collage_embedding)
        factor = 2 ** (len(collage_embedding_channels) - 1)
        if factor != latent_factor(self.vae):
            raise ValueError(f"the collage embedding downsamples by {factor} but the first stage by "
                             f"{latent_factor(self.vae)}; they must match")
        self.vae.requires_grad_(False)
        if collage_residual:  # the model's first guess is the collage itself
            torch.nn.init.zeros_(unet.conv_out.weight)
            torch.nn.init.zeros_(unet.conv_out.bias)
        self.denoiser = AnyDoorDenoiser(unet, controlnet)
        if not train_unet_encoder:
            self.denoiser.freeze_unet_encoder()
        if lora is not None:
            with seeded_init(init_seed + 1):  # adapters' own init (lora_A); the base weights are as without
                add_lora(self.denoiser, **lora)
        if frozen_dtype is not None:
            cast_frozen(self, FROZEN_DTYPES[frozen_dtype])
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.strict_loading = False  # checkpoints hold only the trainable weights
        # update_after_step=-1: decay min(ema_decay, (1 + n) / (10 + n)) from the n-th update on
        self.ema = (EMAModel(self.trainable_parameters().values(), decay=ema_decay, update_after_step=-1)
                    if ema_decay else None)
        self._generator: Optional[torch.Generator] = None

    # ----------------------------------------------------------------- building blocks
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
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The loader ships images in bytes (``src.packed``); their float form is made here, on the device."""
        return unpack_batch(batch) if isinstance(batch, dict) else batch

    def _training_timesteps(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        if "timesteps" in batch:
            return batch["timesteps"]
        if not self.hparams.uniform_timesteps:
            raise RuntimeError(f"the batch has no 'timesteps': add {TIMESTEP_CALLBACK} to trainer.callbacks "
                               "(frequency-aware timesteps, as in configs/tiny.yaml), or set "
                               "model.init_args.uniform_timesteps: true to draw them uniformly")
        size = (batch["target"].shape[0],)
        return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, size, device=self.device, generator=gen)

    def diffusion_loss(self, batch: dict[str, torch.Tensor], timesteps: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        bsz = batch["target"].shape[0]
        latents = encode_images(self.vae, batch["target"], generator=gen).float()  # fp32 even from a bf16 VAE
        if timesteps is None:
            timesteps = self._training_timesteps(batch, gen)
        timesteps = timesteps.to(self.device).long()
        drop = None
        if self.training and self.hparams.cfg_drop_prob > 0:
            drop = torch.rand(bsz, device=self.device, generator=gen) < self.hparams.cfg_drop_prob
        tokens = self.id_tokens(batch["reference"], drop)
        noise = torch.randn(latents.shape, device=self.device, generator=gen, dtype=latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.noise_scheduler.config.prediction_type
        goal = {"epsilon": noise, "sample": latents}.get(prediction)
        if goal is None:
            goal = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        scene = (scene_latents(self.vae, batch["collage"]).float()
                 if self.hparams.collage_residual else None)
        pred = self.denoiser(noisy, timesteps, tokens, batch["collage"], scene)
        per_sample = F.mse_loss(pred.float(), goal.float(), reduction="none").mean(dim=(1, 2, 3))
        gamma = self.hparams.min_snr_gamma
        if gamma:  # min(SNR, gamma) as a weight on the x0 error, whatever the prediction
            snr = compute_snr(self.noise_scheduler, timesteps)
            per_sample = per_sample * snr.clamp(max=gamma) / {"epsilon": snr, "sample": 1.0}.get(prediction, snr + 1)
        return per_sample.mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA follows every optimizer step at once: callbacks' ``on_train_batch_end`` (a
        ModelCheckpoint's save) already see it, and accumulation steps do not count."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self.trainable_parameters().values())

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if self.hparams.frozen_dtype not in (None, "float32") and not precision.endswith("-mixed"):
            raise ValueError(f"model.init_args.frozen_dtype {self.hparams.frozen_dtype} stores the frozen parts in "
                             f"low precision and needs trainer.precision bf16-mixed or 16-mixed, got {precision}")

    def configure_model(self) -> None:
        """FSDP2 when the strategy is Lightning's ``ModelParallelStrategy`` (any other strategy: nothing).
        Each ControlNet down block and U-Net up block is a unit (the trained weights, gathered one block
        at a time), then the rest of the denoiser and the projector; the frozen ViT and VAE stay whole on
        every rank. Checkpoints are whole files (``save_distributed_checkpoint=False``): they keep only
        trained weights, which a sharded (DCP) load cannot take (docs/training.md)."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        # The mesh is ModelParallelStrategy's (set before this hook); load_from_checkpoint calls it without one.
        if self.device_mesh is None or isinstance(self.denoiser, FSDPModule):
            return
        if self.device_mesh["tensor_parallel"].size() > 1:
            raise ValueError("AnyDoorModule shards with FSDP2 only: set the ModelParallelStrategy's tensor_parallel_size "
                             "to 1 and data_parallel_size to the number of GPUs")
        mesh = self.device_mesh["data_parallel"]
        for block in [*self.denoiser.controlnet.down_blocks, *self.denoiser.unet.up_blocks]:
            fully_shard(block, mesh=mesh)
        fully_shard(self.denoiser, mesh=mesh)
        fully_shard(self.id_encoder.projector, mesh=mesh)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The EMA weights in the live parameters for a while (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        params = list(self.trainable_parameters().values())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    # ----------------------------------------------------------------- sampling
    def to_pipeline(self, preprocessing: Preprocessing = DEFAULT_PREPROCESSING, plain: bool = False) -> Any:
        """An ``AnyDoorPipeline`` over this module's live parts (shared, not copied; modes untouched)
        recommending this recipe's sampler and ``preprocessing`` (the centre of the training ranges).
        ``plain``: parts as ordinary fp32 diffusers models, for saving: a part with LoRA adapters or
        low-precision frozen weights becomes a CPU copy with the adapters merged (the live one is left
        as it is); the others stay shared. For EMA weights, use it inside ``ema_weights()``."""
        from models.pipeline import AnyDoorPipeline

        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, set_alpha_to_one=self.final_alpha_one)
        sampling = {"scheduler": "ddim", "steps": self.hparams.sample_steps, "guidance": self.hparams.guidance_scale}
        parts = [self.id_encoder, self.denoiser.controlnet, self.denoiser.unet, self.vae]
        if plain:
            parts = [plain_copy(p) if needs_plain_copy(p) else p for p in parts]
        return AnyDoorPipeline(*parts, scheduler, sampling=sampling, preprocessing=preprocessing._asdict(),
                               collage_residual=self.hparams.collage_residual)

    @torch.no_grad()
    def generate(self, pipe: Any, batch: dict[str, torch.Tensor], steps: Optional[int] = None,
                 guidance: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Crops ``B x 3 x S x S`` in [-1, 1] for a batch of training samples (``reference``,
        ``collage``), by ``pipe`` (``to_pipeline()``) with its resolved sampler."""
        settings = pipe.sampling_settings(None, steps, guidance)
        dtype = FROZEN_DTYPES[self.hparams.frozen_dtype or "float32"]
        # Frozen parts in bf16/fp16 run under autocast, as in training (also outside a training step).
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            tokens = pipe.encode_references(batch["reference"], settings.guidance != 1.0)
            latents = pipe.denoise(tokens, batch["collage"], num_inference_steps=settings.steps,
                                   guidance_scale=settings.guidance, scheduler=settings.scheduler,
                                   generator=generator, progress=False)
            return pipe.decode(latents).float()

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        from src.metrics import psnr_in_box

        bsz = batch["target"].shape[0]
        gen = torch.Generator(device=self.device).manual_seed(12345 + batch_idx)
        with self.ema_weights():
            losses = [self.diffusion_loss(batch, torch.full((bsz,), t, device=self.device), gen)
                      for t in self.hparams.val_timesteps]
            self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=bsz, sync_dist=True)
            if self.hparams.val_sample_steps:
                images = self.generate(self.to_pipeline(), batch, self.hparams.val_sample_steps, generator=gen)
                psnr = psnr_in_box(images, batch["target"].float(), batch["box"], data_range=2.0).mean()
                self.log("val/psnr_box", psnr, prog_bar=True, batch_size=bsz, sync_dist=True)

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(list(self.trainable_parameters().values()))
        if self.lr_scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(opt), "interval": "step"}}

    # ----------------------------------------------------------------- outside training
    @classmethod
    def from_config_file(cls, path: str | Path) -> "AnyDoorModule":
        """The model of a training config (``lightning fit``'s YAML, or the ``config.yaml`` a run saved),
        to sample or export: training-only arguments (optimizer, LR schedule) are dropped, arguments of
        earlier versions mapped (``models.legacy``), and only this project's module classes are built
        (a run folder is untrusted input)."""
        import importlib

        import yaml

        from models.legacy import migrate_module_args

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        spec = (yaml.safe_load(path.read_text()) or {}).get("model")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError(f"{path}: no 'model' section with class_path/init_args")
        module_name, _, name = str(spec["class_path"]).rpartition(".")
        model_cls = getattr(importlib.import_module(module_name), name, None) if module_name.startswith("models.") else None
        if not (isinstance(model_cls, type) and issubclass(model_cls, cls)):
            raise ValueError(f"{path}: model class {spec['class_path']!r} is not an {cls.__name__} of this project")
        return model_cls(**migrate_module_args(dict(spec.get("init_args") or {})))

    def load_training_checkpoint(self, path: str | Path) -> tuple[int, bool]:
        """A Lightning checkpoint of this recipe (trainable weights, EMA) read with ``weights_only=True``;
        returns (its step, whether it held an EMA). Without one, the EMA starts from its weights.
        Errors name the file."""
        from models.components.weights import read_training_checkpoint

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        ckpt = read_training_checkpoint(path)
        trainable = set(self.trainable_parameters())
        unexpected = sorted(set(ckpt["state_dict"]) - trainable)
        missing = sorted(trainable - set(ckpt["state_dict"]))
        if unexpected or missing:
            raise ValueError(f"{path}: does not fit this model: unexpected {unexpected[:5]}, missing trainable {missing[:5]}")
        self.load_state_dict(ckpt["state_dict"], strict=False)
        self.on_load_checkpoint(ckpt)
        if self.ema is not None and "ema" not in ckpt:
            self.ema.shadow_params = [p.detach().clone() for p in self.trainable_parameters().values()]
        return int(ckpt.get("global_step", -1)), "ema" in ckpt

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
        # ModelParallelStrategy loads the weights itself and pops "state_dict" before this hook.
        missing = keep - set(checkpoint["state_dict"]) if "state_dict" in checkpoint else set()
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights, e.g. {sorted(missing)[:5]}")
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(_ema_state(checkpoint["ema"], list(self.trainable_parameters())))
        if "generator_state" in checkpoint:
            self._generator = torch.Generator(device="cpu")
            self._generator.set_state(checkpoint["generator_state"])


def _ema_state(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """diffusers ``EMAModel`` state; checkpoints written before it held ``{num_updates, shadow: {name: t}}``."""
    if "shadow" not in state:
        return state
    return {"optimization_step": int(state["num_updates"]), "shadow_params": [state["shadow"][n] for n in names]}
