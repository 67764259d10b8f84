import torch
from lightning.pytorch import Trainer
from scipy import stats

from callbacks.timesteps import FrequencyAwareTimesteps, draw_timesteps
from models.anydoor_module import AnyDoorModule
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule

RANGES = [(0.5, 1.0), (0.0, 0.5), (0.0, 1.0)]


def test_draws_follow_the_configured_distribution():
    n, T = 20000, 1000
    g = torch.Generator().manual_seed(0)
    video = draw_timesteps(torch.zeros(n, dtype=torch.long), T, 0.3, RANGES, g)
    image = draw_timesteps(torch.ones(n, dtype=torch.long), T, 0.3, RANGES, g)
    multi = draw_timesteps(torch.full((n,), 2), T, 0.3, RANGES, g)
    assert video.dtype == torch.int64 and video.min() >= 0 and video.max() <= T - 1
    # video: P(t >= T/2) = 0.7 + 0.3 * 0.5 = 0.85; image: P(t < T/2) = 0.85
    for share, expected in [((video >= 500).float().mean(), 0.85), ((image < 500).float().mean(), 0.85)]:
        assert abs(float(share) - expected) < 4 * (expected * (1 - expected) / n) ** 0.5
    # within its own range the draw is uniform (KS test on the part above T/2 for video)
    upper = video[video >= 500].double()
    assert stats.kstest(((upper - 500) / 500).numpy(), "uniform").pvalue > 1e-3
    assert stats.kstest((multi.double() / T).numpy(), "uniform").pvalue > 1e-3


def test_no_uniform_share_keeps_kinds_in_their_ranges():
    g = torch.Generator().manual_seed(1)
    kinds = torch.tensor([0, 1] * 500)
    t = draw_timesteps(kinds, 1000, 0.0, RANGES, g)
    assert (t[kinds == 0] >= 500).all() and (t[kinds == 1] < 500).all()


def test_callback_sets_batch_timesteps_during_fit(tmp_path):
    seen = []

    class Spy(AnyDoorModule):
        def training_step(self, batch, batch_idx):
            seen.append(batch["timesteps"].clone())
            return super().training_step(batch, batch_idx)

    cb = FrequencyAwareTimesteps(uniform_prob=0.0, ranges={"video": [0.9, 1.0], "image": [0.0, 0.1]})
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False,
                      callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(Spy(**TINY_MODEL_KWARGS), datamodule=RandomDataModule(batch_size=3))
    assert len(seen) == 3
    # fake samples have kind = index % 3 -> [video, image, multiview] per batch of 3
    for t in seen:
        assert t[0] >= 900 and t[1] < 100
