"""A DACS variant in a few lines: one class choice per batch and a pseudo-label border mask.

Two hooks of :class:`~lightning_uda.methods.DACSModule` are overridden; everything else (EMA
teacher, thresholding, strong augmentation, separate backward passes, checkpointing) is inherited.

    python examples/custom_method.py --steps 1000

trains it on the embedded demo shift (CPU is fine) and prints the target-val mIoU.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor

from lightning_uda.data.demo import demo_datamodule
from lightning_uda.demo import demo_row
from lightning_uda.methods import DACSModule
from lightning_uda.mixing import class_mix_mask


class BorderMaskedDACS(DACSModule):
    """DACS with one class choice shared by the batch and no pseudo-label weight near the border.

    (Not DAFormer's choice: DAFormer draws per image among the batch's classes, which is
    ``DACSModule(mix_mode="batch_union")`` without any subclass.)

    Args:
        border: rows/columns (pixels) at each image border whose pseudo-labels get weight 0 —
            there the teacher sees the least context and is most often wrong.
        **kwargs: the arguments of :class:`DACSModule`.
    """

    def __init__(self, *args, border: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.border = border

    def mix_mask(self, labels: Tensor) -> Tensor:
        # the same source classes are pasted into every image of the batch
        return class_mix_mask(
            labels,
            ignore_index=self.ignore_index,
            mode="per_batch",
            rounding="ceil",
            generator=self.rng,
        )

    def pseudo_label(
        self, images: Tensor, monitor_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        labels, weights = super().pseudo_label(images, monitor_mask=monitor_mask)
        if self.border > 0:
            weights = weights.clone()
            b = self.border
            weights[:, :b] = weights[:, -b:] = 0.0
            weights[:, :, :b] = weights[:, :, -b:] = 0.0
        return labels, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    seed_everything(args.seed, verbose=False)
    _, dacs_settings, data_settings = demo_row(
        "dacs", steps=args.steps, seed=args.seed
    )  # the demo's DACS row
    datamodule = demo_datamodule(seed=args.seed, **data_settings)
    module = BorderMaskedDACS(class_names=datamodule.classes, border=2, **dacs_settings)
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        val_check_interval=args.steps,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=datamodule)
    miou = float(torch.nanmean(module.last_iou["val"]))
    print(f"BorderMaskedDACS target-val mIoU after {args.steps} steps: {miou:.1f}")


if __name__ == "__main__":
    main()
