import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from callbacks.progress import TimeBudgetProgressBar, batches_within_budget

NOMINAL_EPOCH = 1_000_000


def test_batches_within_budget_extrapolates_the_pace():
    assert batches_within_budget(100, 10.0, 20.0) == 300
    assert batches_within_budget(100, 10.0, 0.0) == 100
    assert batches_within_budget(100, 10.0, -3.0) == 100  # over time: never below what is done
    assert batches_within_budget(0, 0.0, 60.0) == 0


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(bar, tmp_path) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(NOMINAL_EPOCH, 4)), batch_size=1)
    trainer = pl.Trainer(max_time={"seconds": 2}, callbacks=[bar], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Linear(), data)
    return trainer


def test_bar_total_is_what_fits_in_max_time(tmp_path):
    bar = TimeBudgetProgressBar(warmup_batches=5)
    trainer = _fit(bar, tmp_path)
    done = trainer.fit_loop.total_batch_idx + 1
    assert 5 < done < NOMINAL_EPOCH
    assert done <= bar.train_progress_bar.total <= 1.5 * done  # the stock bar says 1,000,000
    assert bar.train_progress_bar.n == done


def test_stock_bar_shows_the_nominal_epoch(tmp_path):
    bar = TQDMProgressBar()
    _fit(bar, tmp_path)
    assert bar.train_progress_bar.total == NOMINAL_EPOCH
