"""The ``lightning-uda`` command.

``lightning-uda fit|validate|test|predict --config FILE ...`` is Lightning's ``LightningCLI``:
the method and the data are chosen by ``class_path`` in the config, every constructor argument
can be overridden on the command line (``--model.init_args.lr 1e-4``), and ``--print_config``
shows the resolved config. The papers' recipes are layered configs (``examples/recipes/``: a
base, a dataset and a method layer, see ``docs/recipes.md``)::

    lightning-uda fit --config examples/recipes/base.yaml \\
        --config examples/recipes/data/gta5_cityscapes.yaml \\
        --config examples/recipes/methods/dacs.yaml --data.init_args.source.init_args.root ...

:class:`UDACLI` adds one group to Lightning's, ``checkpoints``, which says how a run keeps its
best checkpoint (:func:`checkpoint_callbacks`); the example scripts are fronts over these same
files and keys, so a run ranks, saves and logs the same way whichever way it is started.

``lightning-uda demo`` trains on the embedded offline domain shift (see
:mod:`lightning_uda.data.demo`) and prints source-val and target-val mIoU per method.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import Dataset, Subset

from lightning_uda.callbacks import UnsupervisedValidation
from lightning_uda.data import UDADataModule
from lightning_uda.methods import UDAModule
from lightning_uda.selection import SIGNALS

#: ``checkpoints.select_by`` values besides ``val_unsup/<signal>``: the labelled target metric,
#: the last model, or the paper's own choice (``checkpoints.paper_select_by``).
SELECT_BY = ("val/mIoU", "last", "paper", *(f"val_unsup/{name}" for name in SIGNALS))
#: Default size and seed of the unlabelled subset scored by ``val_unsup/<signal>``.
UNLABELLED_IMAGES = 500
UNLABELLED_SEED = 0


def resolve_select_by(select_by: str, paper_select_by: str | None) -> str:
    """``select_by``, ``"paper"`` replaced by the paper's choice; an unknown value is an error."""
    if select_by == "paper":
        if paper_select_by is None:
            raise ValueError(
                "checkpoints.select_by 'paper': this recipe's paper does not say how it chose its "
                "reported model (checkpoints.paper_select_by is null); choose val/mIoU, last or a "
                "label-free val_unsup/<signal>"
            )
        select_by = paper_select_by
    if select_by not in SELECT_BY or select_by == "paper":
        raise ValueError(f"checkpoints.select_by must be one of {SELECT_BY}, got {select_by!r}")
    return select_by


def unlabelled_subset(images: Dataset, count: int, seed: int = UNLABELLED_SEED) -> Dataset:
    """A fixed random subset of ``count`` items of ``images`` (in file order; all if fewer), the
    same for every run and seed so that runs are scored on the same images."""
    if len(images) <= count:  # type: ignore[arg-type]
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    return Subset(images, sorted(order[:count].tolist()))


def checkpoint_callbacks(
    select_by: str | None,
    paper_select_by: str | None = None,
    dirpath: str | None = None,
    unlabelled: Dataset | None = None,
    unlabelled_images: int = UNLABELLED_IMAGES,
    num_workers: int = 0,
) -> list[Callback]:
    """The callbacks that keep a run's checkpoints as ``select_by`` says.

    Checkpoints are saved and ranked at the end of each validation (``val_check_interval``), so
    each carries its own validation's score, and ``last.ckpt`` is always kept (for resuming).

    Args:
        select_by: ``None`` (add nothing: Lightning's default checkpointing), ``"val/mIoU"``
            (labelled target val: target supervision), ``"last"`` (the final model, as DAFormer
            and MIC report), ``"val_unsup/<signal>"`` (label-free, on ``unlabelled``) or
            ``"paper"`` (``paper_select_by``).
        paper_select_by: how the recipe's paper chose the model it reports (``None``: unknown).
        dirpath: folder of the checkpoints (``None``: the logger's).
        unlabelled: unlabelled target images for ``val_unsup/<signal>``.
        unlabelled_images: how many of them (a fixed random subset, :func:`unlabelled_subset`).
        num_workers: data-loading workers of the unlabelled images.

    Raises:
        ValueError: an unknown ``select_by``, ``"paper"`` without ``paper_select_by``, or a
            label-free signal without ``unlabelled`` images.
    """
    if select_by is None:
        return []
    select_by = resolve_select_by(select_by, paper_select_by)
    common: dict[str, Any] = dict(
        dirpath=dirpath,
        save_last=True,
        save_on_train_epoch_end=False,
        auto_insert_metric_name=False,
    )
    if select_by == "last":
        return [ModelCheckpoint(**common, save_top_k=0)]
    if select_by == "val/mIoU":
        return [
            ModelCheckpoint(
                **common, monitor=select_by, mode="max", filename="step{step}-miou{val/mIoU:.1f}"
            )
        ]
    if unlabelled is None:
        raise ValueError(
            f"checkpoints.select_by {select_by!r} scores unlabelled target images: set "
            "checkpoints.unlabelled (e.g. Cityscapes train without labels, as the dataset layers "
            "of examples/recipes do)"
        )
    name = select_by.split("/", 1)[1]
    return [
        # every signal is logged (for comparison with val/mIoU); the selected one ranks
        UnsupervisedValidation(
            unlabelled_subset(unlabelled, unlabelled_images), num_workers=num_workers
        ),
        ModelCheckpoint(
            **common,
            monitor=select_by,
            mode=SIGNALS[name][0],
            filename=f"step{{step}}-{name}{{{select_by}:.4f}}-miou{{val/mIoU:.1f}}",
        ),
    ]


class UDACLI(LightningCLI):
    """LightningCLI with UDA defaults: iteration-based training, and a ``checkpoints`` group.

    ``checkpoints.select_by`` (see :func:`checkpoint_callbacks`) adds the ``ModelCheckpoint``
    (and, for a label-free signal, the ``UnsupervisedValidation`` callback) that ranks the run's
    checkpoints; ``checkpoints.paper_select_by`` records the paper's own choice, which
    ``select_by: paper`` takes.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.set_defaults({"trainer.max_epochs": -1})
        parser.add_argument(
            "--checkpoints.select_by",
            type=str | None,
            default=None,
            help=f"how the best checkpoint is chosen, one of {SELECT_BY} (null: Lightning's)",
        )
        parser.add_argument(
            "--checkpoints.paper_select_by",
            type=str | None,
            default=None,
            help="how the recipe's paper chose its reported model (val/mIoU, last, null)",
        )
        parser.add_argument("--checkpoints.dirpath", type=str | None, default=None)
        parser.add_argument(
            "--checkpoints.unlabelled",
            type=Dataset | None,
            default=None,
            help="unlabelled target images scored by val_unsup/<signal>",
        )
        parser.add_argument("--checkpoints.unlabelled_images", type=int, default=UNLABELLED_IMAGES)
        parser.add_argument("--checkpoints.num_workers", type=int, default=0)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        settings = dict(self._get(self.config_init, "checkpoints", default={}) or {})
        callbacks = checkpoint_callbacks(**settings)
        if settings.get("select_by") and any(
            isinstance(c, UnsupervisedValidation) for c in callbacks
        ):
            _check_agreement(settings, self.model)
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        return super().instantiate_trainer(
            **{**kwargs, "callbacks": [*configured, *kwargs.get("callbacks", []), *callbacks]}
        )


def _check_agreement(settings: dict[str, Any], model: LightningModule) -> None:
    select_by = resolve_select_by(settings["select_by"], settings.get("paper_select_by"))
    if select_by == "val_unsup/agreement" and getattr(model, "teacher", None) is None:
        raise ValueError(
            f"checkpoints.select_by {select_by}: {type(model).__name__} has no EMA teacher, so "
            "there is no student-teacher agreement to select by; choose another signal "
            "(e.g. val_unsup/im)"
        )


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
