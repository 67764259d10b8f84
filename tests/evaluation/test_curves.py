import pytest

from evaluation.curves import plot_training, read_scalars, smooth


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb") / "version_0"
    writer = SummaryWriter(str(root))
    for step in range(0, 100, 10):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    for step in (50, 99):
        writer.add_scalar("val/loss", 0.2, step)
        writer.add_scalar("val/psnr_box", 10.0 + step / 50, step)
    writer.close()
    return root


def test_read_scalars_and_plot(run_dir, tmp_path):
    scalars = read_scalars(str(run_dir.parent / "version_*"))
    assert scalars["train/loss"][0] == (0, 1.0) and len(scalars["train/loss"]) == 10
    assert [s for s, _ in scalars["val/psnr_box"]] == [50, 99]
    png = plot_training(run_dir, tmp_path / "c.png", checkpoint_series=[{"step": 0, "psnr_box": 8.0}, {"step": 99, "psnr_box": 11.0}], baselines={"background": 12.0})
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_smooth_is_debiased_and_missing_logs_are_reported(tmp_path):
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    with pytest.raises(FileNotFoundError, match="event files"):
        read_scalars(tmp_path)
