"""`lightning` console script: a LightningCLI in subclass mode (fit / validate / test / predict).

Model, datamodule, callbacks and trainer come from YAML with ``class_path``/``init_args``, so
``lightning fit --config configs/anydoor.yaml`` is the whole training command. On top of the stock CLI:
every path in the config is checked before anything is built (all problems in one short message),
parse errors are cut to the offending key, options must be spelled out (no prefix matching), and every
run gets ``callbacks.checkpoint_io.SafeCheckpointIO`` (atomic writes, weights-only loading, remote
checkpoints never cached) and ``callbacks.interrupt.StopOnSignal`` (Ctrl-C/SIGTERM save, then exit).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import warnings
from typing import Any, NoReturn, Optional

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from src.cli.train_checks import ConfigError, config_problems, short_parse_error


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of ``parser`` and of its subcommand parsers (for "did you mean")."""
    found = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += option_strings(sub)
    return found


class ShortErrorParser(LightningArgumentParser):
    """Parse errors as ``key: what is wrong`` (the full message with JSONARGPARSE_DEBUG=1)."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # nested parsers raise; their message reaches the outer parser
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {short_parse_error(message, option_strings(parser))}\n"
                         f"(`{prog} --help` lists the options)\n")
        self.exit(2)


class AnyDoorCLI(LightningCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            problems = config_problems(self.config[subcommand].as_dict(), subcommand)
            if problems:
                raise ConfigError(f"{len(problems)} problem(s) in the configuration, nothing was built:\n  "
                                  + "\n  ".join(problems))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters (weights-only) before we see it: name the file.
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            from callbacks.checkpoint_io import load_error

            raise load_error(self.config[self.config.subcommand].get("ckpt_path"), err) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (MisconfigurationException, ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{type(err).__name__}: {err}") from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from lightning.fabric.plugins import CheckpointIO

        from callbacks.checkpoint_io import SafeCheckpointIO
        from callbacks.interrupt import StopOnSignal

        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        custom = [p for p in plugins if isinstance(p, CheckpointIO)]
        if custom:
            warnings.warn(f"{type(custom[0]).__name__} replaces SafeCheckpointIO: checkpoint writes may not be "
                          "atomic and remote checkpoints may load with weights_only=False")
        else:
            plugins.append(SafeCheckpointIO())
        callbacks = list(config.get("callbacks") or [])
        if not any(isinstance(c, StopOnSignal) for c in callbacks):
            callbacks.append(StopOnSignal())  # last: its on_train_end runs after the export callback's
        return super().instantiate_trainer(**{"plugins": plugins, "callbacks": callbacks, **kwargs})


def cli_main(args: Any = None, run: bool = True) -> AnyDoorCLI:
    """Build (and by default run) the CLI; ``args`` may be an argv list or a dict config (tests)."""
    # The frozen DINOv2, VAE and U-Net encoder stay in eval mode on purpose (no dropout, fixed norms).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    return AnyDoorCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_class=ShortErrorParser,
        parser_kwargs={"allow_abbrev": False},  # `--trainer.max_step` must not silently mean max_steps
    )


def main() -> None:
    """Console-script entry: None (exit 0) when the run ends normally, 2 on a bad config or checkpoint,
    128 + signal number when SIGINT/SIGTERM stopped it (after saving)."""
    try:
        cli = cli_main()
    except ValueError as err:
        from callbacks.checkpoint_io import CheckpointLoadError

        if not isinstance(err, (ConfigError, CheckpointLoadError)):
            raise
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    from callbacks.interrupt import StopOnSignal

    trainer = getattr(cli, "trainer", None)
    stopped = [c.stopped_by for c in getattr(trainer, "callbacks", []) if isinstance(c, StopOnSignal) and c.stopped_by]
    if stopped:
        sys.exit(128 + int(stopped[0]))


if __name__ == "__main__":
    main()
