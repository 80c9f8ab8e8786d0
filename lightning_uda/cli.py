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

Every run started here (and so every run of the example fronts) also gets: the whole-run
progress bar (:class:`~lightning_uda.callbacks.RunProgressBar`, unless the config names another
or turns the bar off), a validation and scored checkpoint at the last step
(:class:`~lightning_uda.callbacks.ValidateLastStep`), SLURM's requeue signal handled at a step
boundary (:class:`~lightning_uda.callbacks.SlurmRequeue`), a check of the multi-node launch
variables (:func:`check_launch_environment`), and quiet output
(:func:`lightning_uda.quiet.quiet_run`; ``preamble``, e.g. the fronts' recipe notes, is printed
once, by global rank 0).

``lightning-uda demo`` trains on the embedded offline domain shift (see
:mod:`lightning_uda.data.demo`) and prints source-val and target-val mIoU per method.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import Dataset, Subset

from lightning_uda.callbacks import (
    RunProgressBar,
    SlurmRequeue,
    UnsupervisedValidation,
    ValidateLastStep,
)
from lightning_uda.data import UDADataModule
from lightning_uda.methods import UDAModule
from lightning_uda.quiet import quiet_run
from lightning_uda.selection import SIGNALS

#: ``checkpoints.select_by`` values besides ``val_unsup/<signal>``: the labelled target metric,
#: the last model, or the paper's own choice (``checkpoints.paper_select_by``).
SELECT_BY = ("val/mIoU", "last", "paper", *(f"val_unsup/{name}" for name in SIGNALS))
#: ``val/<target>/mIoU``: one named validation target of several (``UDADataModule(val={...})``);
#: ``val/mIoU`` is the datamodule's primary target (``val_primary``, default the first).
TARGET_MIOU = re.compile(r"val/[^/\s]+/mIoU")
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
    known = select_by in SELECT_BY or TARGET_MIOU.fullmatch(select_by) is not None
    if not known or select_by == "paper":
        raise ValueError(
            f"checkpoints.select_by must be one of {SELECT_BY}, or val/<target>/mIoU for one of "
            f"several validation targets, got {select_by!r}"
        )
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
            (labelled target val: target supervision; with several validation targets, the
            datamodule's primary one, ``val_primary``), ``"val/<target>/mIoU"`` (one named
            target of several), ``"last"`` (the final model, as DAFormer
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
    if select_by == "val/mIoU" or TARGET_MIOU.fullmatch(select_by):
        return [
            ModelCheckpoint(
                **common,
                monitor=select_by,
                mode="max",
                filename=f"step{{step}}-miou{{{select_by}:.1f}}",
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
    ``select_by: paper`` takes. Every Trainer also gets the run callbacks of :func:`run_callbacks`,
    and ``preamble`` (text) is printed by global rank 0 once the Trainer knows the ranks.
    """

    def __init__(self, *args: Any, preamble: str | None = None, **kwargs: Any) -> None:
        self.preamble = preamble
        super().__init__(*args, **kwargs)

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
        trainer_config = self._get(self.config_init, "trainer", default={})
        check_launch_environment(int(trainer_config.get("num_nodes") or 1))
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        configured = [*configured, *kwargs.get("callbacks", [])]
        progress_bar = trainer_config.get("enable_progress_bar") is not False
        callbacks += run_callbacks(configured, progress_bar=progress_bar)
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": [*configured, *callbacks]})
        if self.preamble and trainer.is_global_zero:
            print(self.preamble, flush=True)
        return trainer


def run_callbacks(configured: Sequence[Callback], progress_bar: bool = True) -> list[Callback]:
    """The callbacks every run of the CLI adds to ``configured``: :class:`RunProgressBar` (when
    ``progress_bar`` and no progress bar is configured), :class:`ValidateLastStep` and
    :class:`SlurmRequeue` (each unless one is configured)."""
    added: list[Callback] = []
    if progress_bar and not any(isinstance(c, ProgressBar) for c in configured):
        added.append(RunProgressBar())
    for kind in (ValidateLastStep, SlurmRequeue):
        if not any(isinstance(c, kind) for c in configured):
            added.append(kind())
    return added


def check_launch_environment(num_nodes: int, environ: Mapping[str, str] | None = None) -> None:
    """Refuse multi-node launch variables that would hang at start-up.

    Applies where Lightning's own environment (``LightningEnvironment``) runs the processes, i.e.
    not under SLURM, torchrun or LSF, which set every variable themselves. There a node
    finds node 0 at ``MASTER_ADDR:MASTER_PORT`` and knows itself by ``NODE_RANK``: without
    ``MASTER_ADDR`` every node but 0 would wait for 127.0.0.1 forever, and several nodes without
    ``NODE_RANK`` would all claim rank 0.

    Args:
        num_nodes: ``trainer.num_nodes``.
        environ: the variables to check (default ``os.environ``, where the managed launchers
            are detected first).

    Raises:
        ValueError: ``NODE_RANK`` without ``MASTER_ADDR``, ``NODE_RANK`` not an integer in
            ``0..num_nodes-1``, or ``num_nodes > 1`` without ``NODE_RANK``; the message names the
            variable and the fix.
    """
    env = os.environ if environ is None else environ
    managed = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment)
    if environ is None and any(kind.detect() for kind in managed):
        return
    node_rank = env.get("NODE_RANK")
    launch = "docs/cluster.md shows both ways (torchrun, or these variables)"
    alone = num_nodes == 1 and node_rank in (None, "0")  # one machine: 127.0.0.1 is right
    if node_rank is not None and not env.get("MASTER_ADDR") and not alone:
        raise ValueError(
            f"NODE_RANK={node_rank} is set but MASTER_ADDR is not: the nodes cannot find node 0. "
            "Set MASTER_ADDR to node 0's host name or IP address and MASTER_PORT to a free port, "
            f"the same on every node, or launch with torchrun --nnodes {num_nodes} --node-rank R "
            f"--master-addr HOST --master-port PORT; {launch}."
        )
    if node_rank is not None and (not node_rank.isdigit() or int(node_rank) >= num_nodes):
        raise ValueError(
            f"NODE_RANK={node_rank!r} must be an integer from 0 to {num_nodes - 1} for "
            f"num_nodes={num_nodes} (--num-nodes / trainer.num_nodes): give each node its own "
            f"rank; {launch}."
        )
    if num_nodes > 1 and node_rank is None:
        raise ValueError(
            f"num_nodes={num_nodes} (--num-nodes / trainer.num_nodes) but NODE_RANK is not set: "
            "every node would claim rank 0. Start the same command on each node with NODE_RANK "
            f"0..{num_nodes - 1}, MASTER_ADDR and MASTER_PORT (or use torchrun or SLURM); {launch}."
        )


def _check_agreement(settings: dict[str, Any], model: LightningModule) -> None:
    select_by = resolve_select_by(settings["select_by"], settings.get("paper_select_by"))
    if select_by == "val_unsup/agreement" and getattr(model, "teacher", None) is None:
        raise ValueError(
            f"checkpoints.select_by {select_by}: {type(model).__name__} has no EMA teacher, so "
            "there is no student-teacher agreement to select by; choose another signal "
            "(e.g. val_unsup/im)"
        )


def main(argv: Sequence[str] | None = None, preamble: str | None = None) -> None:
    """Entry point of the ``lightning-uda`` console script (``preamble``: text printed once, by
    global rank 0, before training; the example fronts pass their recipe notes)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from lightning_uda.demo import main as demo_main

        demo_main(args[1:])
        return
    # `predict CHECKPOINT INPUT...` (or -h) is lightning_uda.predict; `predict --config ...` is
    # LightningCLI's own predict subcommand.
    if (
        args[:1] == ["predict"]
        and len(args) > 1
        and (args[1] in ("-h", "--help") or not args[1].startswith("-"))
    ):
        from lightning_uda.predict import main as predict_main

        sys.exit(predict_main(args[1:]))
    if args[:1] == ["evaluate"]:
        from lightning_uda.evaluate import main as evaluate_main

        sys.exit(evaluate_main(args[1:]))
    with quiet_run():
        UDACLI(
            UDAModule,
            UDADataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            preamble=preamble,
        )


if __name__ == "__main__":
    main()
