"""The model-backed methods on the tiny random-init AnyDoor (32 px crops)."""

import pytest
import torch
import yaml

from evaluation.jobs import prepare_job
from evaluation.methods import ModuleMethod, PipelineMethod
from evaluation.runner import evaluate
from src.jobs import read_jobs
from tests.fakes import TINY_MODEL_KWARGS

SIZE = 32


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    args["unet_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args["unet_config"].items()}
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "models.anydoor_module.AnyDoorModule", "init_args": args}}))
    return path


@pytest.fixture(scope="module")
def prepared(job_folder):
    return [prepare_job(j, SIZE) for j in read_jobs(job_folder)]


def test_pipeline_method_is_seeded_per_job(prepared):
    from tests.fakes import tiny_pipeline

    method = PipelineMethod(tiny_pipeline(), steps=2, guidance=2.0)
    assert method.size == SIZE
    together = method(prepared)
    alone = method(prepared[1:2])
    assert together.shape == (3, 3, SIZE, SIZE)
    assert torch.allclose(together[1], alone[0], atol=1e-6)


def test_untrained_and_checkpointed_module(tiny_config, prepared, tmp_path, job_folder):
    untrained = ModuleMethod(tiny_config)
    assert untrained.steps == TINY_MODEL_KWARGS["sample_steps"] and untrained.size == SIZE
    # a checkpoint as Lightning writes it: trainable weights only, here shifted so the output must change
    from models.anydoor_module import AnyDoorModule

    module = AnyDoorModule(**TINY_MODEL_KWARGS)
    state = {k: p.detach() + 0.05 for k, p in module.trainable_parameters().items()}
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(tiny_config.read_text())  # as Lightning saves it next to the checkpoints
    torch.save({"state_dict": state, "global_step": 7}, run / "checkpoints" / "last.ckpt")
    trained = ModuleMethod(checkpoint=str(tmp_path / "version_*" / "checkpoints" / "*.ckpt"))
    assert "step 7" in trained.source
    name = next(k for k in state if k.startswith("denoiser.unet.up_blocks"))
    sub = name.removeprefix("denoiser.unet.")
    assert torch.equal(trained.pipeline.unet.state_dict()[sub], state[name])
    assert not torch.allclose(untrained(prepared[:1]), trained(prepared[:1]))
    result = evaluate(read_jobs(job_folder), {"untrained": untrained, "trained": trained}, tmp_path / "eval", size=SIZE, save_images=False)
    assert result["summary"]["trained"]["psnr_box"]["n"] == 3
    from evaluation.curves import score_checkpoints

    series = score_checkpoints(None, str(run / "checkpoints" / "*.ckpt"), read_jobs(job_folder)[:1], size=SIZE)
    assert [r["step"] for r in series] == [0, 7] and all("psnr_box" in r for r in series)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        ModuleMethod(tiny_config, checkpoint=bad)
    with pytest.raises(FileNotFoundError, match="make train"):
        ModuleMethod(tiny_config, checkpoint=str(tmp_path / "none" / "*.ckpt"))


def test_a_job_files_seed_sets_the_noise(prepared):
    from dataclasses import replace

    from tests.fakes import tiny_pipeline

    method = PipelineMethod(tiny_pipeline(), steps=1, guidance=1.0)
    same = [replace(prepared[0], seed=5), replace(prepared[0], seed=5, name="renamed"), replace(prepared[0], seed=6)]
    out = method(same)
    assert torch.equal(out[0], out[1]) and not torch.allclose(out[0], out[2])  # the seed, not the name, decides


def test_eval_cli_prints_the_resolved_sampler(job_folder, tmp_path, capsys):
    from models.pipeline import AnyDoorPipeline
    from src.cli.main import main
    from tests.fakes import tiny_pipeline

    AnyDoorPipeline(**tiny_pipeline().components).save_pretrained(tmp_path / "model")  # recommends nothing
    assert main(["eval", "--jobs", str(job_folder), "--model", f"tiny={tmp_path / 'model'}", "--steps", "1",
                 "--no-baselines", "--out", str(tmp_path / "out"), "--grid-rows", "0"]) == 0
    assert f"tiny: sampling dpm, 1 step(s), guidance 5 ({tmp_path / 'model'})" in capsys.readouterr().err  # the fallback


def test_unreadable_and_code_carrying_checkpoints_are_refused(tmp_path):
    import os

    from models.components.weights import read_training_checkpoint as read_checkpoint

    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.ckpt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "payload": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="evil.ckpt: holds objects other than tensors and plain data: refused"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="plain.ckpt: not a Lightning checkpoint"):
        read_checkpoint(tmp_path / "plain.ckpt")


def test_compositing_modes_are_scored_on_what_the_user_gets(prepared):
    """``composite`` scores the pasted-back image cut to the crop: with ``box`` everything outside the
    grown box is the input target byte for byte (an exact background score); the raw crop is the
    model's own output, which a random model does not keep; ``crop`` pastes (nearly) the whole crop."""
    from evaluation.runner import score_job
    from tests.fakes import tiny_pipeline

    pipe = tiny_pipeline()
    raw, box, crop = (PipelineMethod(pipe, steps=1, composite=c)(prepared) for c in (None, "box", "crop"))
    for k, job in enumerate(prepared):
        scores = {name: score_job(job, images[k], {}) for name, images in (("raw", raw), ("box", box), ("crop", crop))}
        assert scores["box"]["psnr_bg"] == float("inf")  # SSIM windows straddling the box keep it below 1
        assert scores["raw"]["psnr_bg"] < 30 and scores["crop"]["psnr_bg"] < 30
        assert scores["box"]["ssim_bg"] > max(scores["raw"]["ssim_bg"], scores["crop"]["ssim_bg"])
        changed = (box[k] != job.target).any(0).nonzero()  # every changed pixel lies inside the box
        x1, y1, x2, y2 = job.box
        assert len(changed) and changed[:, 0].min() >= y1 and changed[:, 0].max() < y2
        assert changed[:, 1].min() >= x1 and changed[:, 1].max() < x2
    with pytest.raises(ValueError, match="composite must be one of"):
        PipelineMethod(pipe, composite="everything")
