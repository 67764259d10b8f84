"""`lightning` console script: a LightningCLI in subclass mode (fit / validate / test / predict).

Model, datamodule, callbacks and trainer come from YAML with ``class_path``/``init_args``, so
``lightning fit --config configs/anydoor.yaml`` is the whole training command.
"""

from __future__ import annotations

import warnings
from typing import Any


def cli_main(args: Any = None, run: bool = True):
    """Build (and by default run) the CLI; ``args`` may be an argv list or a dict config (tests)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # The frozen DINOv2, VAE and U-Net encoder stay in eval mode on purpose (no dropout, fixed norms).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main() -> None:
    """Console-script entry: returns None so the exit status is 0 (a returned CLI object would exit 1)."""
    cli_main()


if __name__ == "__main__":
    main()
