"""Random batches that follow the training-sample contract of docs/design.md (tests only)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

# The one tiny test model (32 px crops; configs/tiny.yaml is the shipped tiny definition, 64 px).
TINY_MODEL_KWARGS = dict(
    unet_config=dict(
        sample_size=8, in_channels=48, out_channels=48, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, use_linear_projection=True,
        norm_num_groups=8,
    ),
    vae={"type": "space_to_depth", "factor": 4},
    id_encoder={"model_name": "vit_small_patch14_dinov2",
                "vit_kwargs": dict(patch_size=14, embed_dim=32, depth=1, num_heads=2, init_values=1e-5, img_size=518),
                "image_size": 56},
    collage_embedding_channels=[16, 32, 96],
    noise_schedule={"prediction_type": "v_prediction"},
    uniform_timesteps=True,  # tests train without the FrequencyAwareTimesteps callback unless they add it
    sample_steps=2,  # the optimizer is the default AdamW(lr=1e-3)
)


def tiny_pipeline(**overrides):
    """An ``AnyDoorPipeline`` of the tiny test model (random init, seeded)."""
    from models.anydoor_module import AnyDoorModule

    return AnyDoorModule(**{**TINY_MODEL_KWARGS, **overrides}).to_pipeline()


def make_sample(index: int, size: int = 32, ref_size: int = 56) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(index)
    target = torch.rand(3, size, size, generator=g) * 2 - 1
    collage = torch.cat([target.clone(), torch.zeros(1, size, size)])
    x1, y1 = 4 + index % 4, 6
    x2, y2 = x1 + size // 2, y1 + size // 2
    collage[:3, y1:y2, x1:x2] = 0
    collage[3, y1:y2, x1:x2] = 1
    mask = torch.zeros(1, size, size)
    mask[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2] = 1
    return {
        "reference": torch.rand(3, ref_size, ref_size, generator=g),
        "target": target,
        "collage": collage,
        "kind": torch.tensor(index % 3),
        "box": torch.tensor([x1, y1, x2, y2]),
        "object_mask": mask,
        "index": torch.tensor(index),
    }


class RandomPairs(Dataset):
    def __init__(self, length: int = 16, size: int = 32, offset: int = 0) -> None:
        self.length, self.size, self.offset = length, size, offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return make_sample(i + self.offset, self.size)


class RandomDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 2, length: int = 8, size: int = 32) -> None:
        super().__init__()
        self.batch_size, self.length, self.size = batch_size, length, size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomPairs(self.length, self.size), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomPairs(4, self.size, offset=1000), batch_size=self.batch_size)
