"""The ``lightning-uda`` command.

``lightning-uda fit|validate|test|predict --config FILE`` is Lightning's ``LightningCLI``: the
method and the data are chosen by ``class_path`` in the config (see ``examples/configs/``), every
constructor argument can be overridden on the command line
(``--model.init_args.lr 1e-4``), and ``--print_config`` shows the resolved config.

``lightning-uda demo`` trains on the embedded offline domain shift (see
:mod:`lightning_uda.data.demo`) and prints source-val and target-val mIoU per method.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from lightning_uda.data import UDADataModule
from lightning_uda.methods import UDAModule


class UDACLI(LightningCLI):
    """LightningCLI with UDA defaults: iteration-based training and step-wise checkpoints."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.set_defaults({"trainer.max_epochs": -1})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-uda`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from lightning_uda.demo import main as demo_main

        demo_main(args[1:])
        return
    UDACLI(
        UDAModule,
        UDADataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
