"""UnsupervisedValidation: logged signals, split-level accumulation, checkpoint selection, DDP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from lightning_uda.callbacks import UnsupervisedValidation
from lightning_uda.methods import DACSModule, SourceOnlyModule
from lightning_uda.selection import (
    SIGNALS,
    class_distribution_kl,
    confident_fraction,
    information_maximization,
    mean_entropy,
    prediction_agreement,
    soft_neighbourhood_density,
)
from tests.helpers.examples import gta_and_cityscapes, load_example
from tests.helpers.methods import ToyScenes, cpu_trainer, tiny_module_kwargs, toy_datamodule

SOURCE_FREQUENCIES = [0.6, 0.25, 0.15]


def unlabelled() -> ToyScenes:
    """8 target-like images (16×16); their masks are there and must be ignored."""
    return ToyScenes(8, seed=7, shift=0.5)


class Recorder(Callback):
    """What ModelCheckpoint sees: ``trainer.callback_metrics`` at ``on_validation_end``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.seen.append({k: float(v) for k, v in metrics.items() if "val_unsup" in k})


def validating_trainer(tmp_path, max_steps: int, callbacks, val_every: int = 1, **kwargs):
    """A CPU trainer validating every ``val_every`` steps (the labelled toy val set)."""
    return cpu_trainer(
        tmp_path,
        max_steps=max_steps,
        max_epochs=-1,
        limit_val_batches=1.0,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        **kwargs,
    )


def signals_on_all_data(module, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """The pure functions on the whole split at once (teacher run per batch, as in training)."""
    module.eval()
    with torch.no_grad():
        probs = torch.softmax(module.segment(images), dim=1)
        values = {
            "entropy": mean_entropy(probs),
            "im": information_maximization(probs),
            "confident_fraction": confident_fraction(probs, 0.968),
            "class_kl": class_distribution_kl(probs, SOURCE_FREQUENCIES),
            "snd": soft_neighbourhood_density(probs, max_pixels=None),
        }
        if hasattr(module, "teacher"):
            teacher = torch.cat(
                [module.teacher_logits(part) for part in images.split(batch_size)]
            ).argmax(dim=1)
            values["agreement"] = prediction_agreement(probs.argmax(dim=1), teacher, 3)
    return {k: float(v) for k, v in values.items()}


@pytest.mark.parametrize("module_cls", [SourceOnlyModule, DACSModule])
@pytest.mark.fit
def test_fit_logs_every_signal_accumulated_over_the_split(tmp_path, module_cls):
    torch.manual_seed(0)
    module = module_cls(**tiny_module_kwargs())
    # two batches of 4 images; 2,048 pixels in all, so SND sees every pixel
    callback = UnsupervisedValidation(unlabelled(), batch_size=4, snd_pixels=2048)
    recorder = Recorder()
    trainer = validating_trainer(tmp_path, 2, [callback, recorder], val_every=2)
    trainer.fit(module, datamodule=toy_datamodule())
    expected = set(SIGNALS) - ({"agreement"} if module_cls is SourceOnlyModule else set())
    logged = {k.split("/", 1)[1] for k in trainer.callback_metrics if k.startswith("val_unsup/")}
    assert logged == expected
    assert set(callback.last_results) == expected
    assert len(recorder.seen) == 1  # one validation, none during the sanity check
    for name, value in callback.last_results.items():
        assert math.isfinite(value), name
        assert recorder.seen[0][f"val_unsup/{name}"] == pytest.approx(value, rel=1e-6)
    # the source frequencies were counted from the datamodule's source labels
    assert callback.source_frequencies is not None and len(callback.source_frequencies) == 3
    # split-level statistics over 2 batches == the functions on the concatenated split
    callback.source_frequencies = torch.tensor(SOURCE_FREQUENCIES, dtype=torch.float64)
    results = callback.evaluate(module)
    images = unlabelled().images
    direct = signals_on_all_data(module, images, batch_size=4)
    assert set(direct) == expected
    for name in expected:
        assert results[name] == pytest.approx(direct[name], rel=1e-5, abs=1e-6), name
    # IM is split-level: not the mean of the two batches' IM
    module.eval()
    with torch.no_grad():
        halves = [
            information_maximization(torch.softmax(module.segment(p), 1)) for p in images.split(4)
        ]
    assert results["im"] >= float(sum(halves) / 2) - 1e-6


class _Logits(torch.nn.Module):
    """A stand-in module whose logits are its input images (so every map is chosen by hand)."""

    num_classes = 3
    device = torch.device("cpu")

    def __init__(self, teacher_shift: float | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Identity()
        if teacher_shift is not None:
            self.teacher = _Logits()
            self.teacher_shift = teacher_shift

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer(images)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return images.roll(1, dims=-1) + self.teacher_shift


def test_accumulation_over_batches_equals_the_functions_on_the_whole_split():
    g = torch.Generator().manual_seed(0)
    images = 3.0 * torch.randn(12, 3, 8, 8, generator=g)
    images[:6, 0] += 6.0  # the first batch mostly class 0, the second mostly class 1
    images[6:, 1] += 6.0
    module = _Logits(teacher_shift=0.5)
    callback = UnsupervisedValidation(
        torch.utils.data.TensorDataset(images),
        batch_size=6,
        snd_pixels=768,
        source_frequencies=SOURCE_FREQUENCIES,
    )
    results = callback.evaluate(module)
    probs = torch.softmax(images, dim=1)
    teacher = module.teacher_logits(images).argmax(dim=1)
    direct = {
        "entropy": mean_entropy(probs),
        "im": information_maximization(probs),
        "confident_fraction": confident_fraction(probs),
        "class_kl": class_distribution_kl(probs, SOURCE_FREQUENCIES),
        "agreement": prediction_agreement(probs.argmax(dim=1), teacher, 3),
        "snd": soft_neighbourhood_density(probs, max_pixels=None),
    }
    assert set(results) == set(direct)
    for name, value in direct.items():
        assert results[name] == pytest.approx(float(value), rel=1e-5), name
    # the batches are far from the split: IM per batch is much lower, KL and agreement differ
    halves = [information_maximization(p).item() for p in probs.split(6)]
    assert max(halves) < results["im"] - 0.2
    assert 0.05 < results["confident_fraction"] < 0.95
    # with a budget, one batch samples the pixels soft_neighbourhood_density(seed=...) samples
    one_batch = UnsupervisedValidation(
        torch.utils.data.TensorDataset(images[:6]),
        batch_size=6,
        snd_pixels=100,
        seed=5,
        signals=["snd"],
    ).evaluate(module)
    expected = soft_neighbourhood_density(probs[:6], max_pixels=100, seed=5)
    assert one_batch["snd"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.fit
def test_model_checkpoint_selects_by_an_unsupervised_signal(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val_unsup/im",
        mode="max",
        save_top_k=1,
        filename="step{step}-im{val_unsup/im:.6f}",
        auto_insert_metric_name=False,
    )
    recorder = Recorder()
    callback = UnsupervisedValidation(unlabelled(), batch_size=4, signals=["im", "entropy"])
    trainer = validating_trainer(
        tmp_path, 3, [checkpoint, recorder, callback], enable_checkpointing=True
    )
    trainer.fit(SourceOnlyModule(**tiny_module_kwargs()), datamodule=toy_datamodule())
    scores = [seen["val_unsup/im"] for seen in recorder.seen]
    assert len(scores) == 3 and all("val_unsup/entropy" in seen for seen in recorder.seen)
    best = max(range(3), key=lambda i: scores[i])
    assert float(checkpoint.best_model_score) == pytest.approx(scores[best])
    # the file of the best validation, named with its own (not a previous validation's) score
    name = f"step{best + 1}-im{scores[best]:.6f}.ckpt"
    assert checkpoint.best_model_path.endswith(name), (checkpoint.best_model_path, scores)
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["monitor"] == "val_unsup/im"
    assert float(state["best_model_score"]) == pytest.approx(scores[best])


def test_eval_mode_no_grad_and_modes_restored():
    torch.manual_seed(0)
    module = DACSModule(**tiny_module_kwargs())
    module.train()
    before = {name: m.training for name, m in module.named_modules()}
    assert before[""] and not before["teacher"]
    seen = []
    module.model.register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    loader = DataLoader(unlabelled(), batch_size=3)  # a loader (3 + 3 + 2 images) works too
    callback = UnsupervisedValidation(
        loader, max_batches=2, signals=["entropy", "agreement"], snd_pixels=64
    )
    results = callback.evaluate(module)
    assert set(results) == {"entropy", "agreement"} and 0 <= results["agreement"] <= 100
    assert seen == [(False, False)] * 2  # two batches, eval mode, no graph
    assert {name: m.training for name, m in module.named_modules()} == before


def test_agreement_skipped_without_teacher_and_class_kl_needs_a_source():
    module = SourceOnlyModule(**tiny_module_kwargs())
    callback = UnsupervisedValidation(unlabelled(), batch_size=8, signals=["agreement", "im"])
    with pytest.warns(UserWarning, match="no teacher"):
        assert set(callback.evaluate(module)) == {"im"}
    with pytest.raises(ValueError, match="source_frequencies"):
        UnsupervisedValidation(unlabelled(), signals=["class_kl"]).evaluate(module)
    with pytest.warns(UserWarning, match="class_kl"):  # default signals: skipped, said once
        assert "class_kl" not in UnsupervisedValidation(unlabelled()).evaluate(module)
    wrong = UnsupervisedValidation(unlabelled(), source_frequencies=[0.5, 0.5])
    with pytest.raises(ValueError, match="2 entries but the module has 3 classes"):
        wrong.evaluate(module)


def test_bad_arguments_are_clear_errors():
    data = unlabelled()
    with pytest.raises(ValueError, match="unknown signal"):
        UnsupervisedValidation(data, signals=["mIoU"])
    with pytest.raises(ValueError, match="snd_pixels"):
        UnsupervisedValidation(data, snd_pixels=1)
    with pytest.raises(ValueError, match="confidence_threshold"):
        UnsupervisedValidation(data, confidence_threshold=2.0)
    with pytest.raises(ValueError, match="max_batches"):
        UnsupervisedValidation(data, max_batches=0)
    with pytest.raises(ValueError, match="source_frequencies"):
        UnsupervisedValidation(data, source_frequencies=[0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="Dataset or a DataLoader"):
        UnsupervisedValidation([torch.zeros(3, 4, 4)])
    module = SourceOnlyModule(**tiny_module_kwargs(), normalization="caffe")
    with pytest.raises(ValueError, match="normalised as 'imagenet'"):
        # ToyScenes declares no space; a Cityscapes-like dataset declaring ImageNet does
        data.normalization = "imagenet"
        UnsupervisedValidation(data, signals=["im"]).evaluate(module)


class _Dump(Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "val_unsup" in k}
        torch.save(metrics, self.path / f"rank{trainer.global_rank}.pt")


@pytest.mark.fit
@pytest.mark.ddp
def test_two_processes_give_the_single_process_values(tmp_path):
    torch.manual_seed(0)
    module = DACSModule(**tiny_module_kwargs())
    options = dict(batch_size=2, snd_pixels=300, source_frequencies=SOURCE_FREQUENCIES)
    single = UnsupervisedValidation(unlabelled(), **options).evaluate(module)
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = cpu_trainer(
        tmp_path,
        devices=2,
        strategy=strategy,
        limit_val_batches=1.0,
        callbacks=[UnsupervisedValidation(unlabelled(), **options), _Dump(tmp_path)],
    )
    trainer.validate(module, datamodule=toy_datamodule())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == {f"val_unsup/{name}" for name in SIGNALS}
        for name, value in single.items():
            # 4 batches of 2 split over the ranks; the SND sample (300 of 2,048 pixels) is the
            # same pixels as in one process
            assert got[f"val_unsup/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name


# ------------------------------------------------------------------ the examples' --select-by
@pytest.fixture(scope="module")
def common():
    return load_example("_common")


def test_example_select_by_prints_the_choice(common, capsys):
    common.run(common.parse_args("x", ["--method", "dacs", "--print-recipe"]), source="gta5")
    assert "model selection: val_unsup/entropy (label-free" in capsys.readouterr().out
    labelled = common.parse_args(
        "x", ["--method", "dacs", "--print-recipe", "--select-by", "val/mIoU"]
    )
    common.run(labelled, source="gta5")
    assert "model selection: val/mIoU (labelled target val: target supervision)" in (
        capsys.readouterr().out
    )
    assert {"val/mIoU", *(f"val_unsup/{n}" for n in SIGNALS)} <= set(common.SELECT_BY)
    argv = ["--method", "dacs", "--print-recipe", "--select-by", "val_unsup/agreement"]
    common.run(common.parse_args("x", argv), source="gta5")
    out = capsys.readouterr().out
    assert "model selection: val_unsup/agreement (label-free" in out
    assert "target supervision" not in out
    with pytest.raises(SystemExit):
        common.parse_args("x", ["--print-recipe", "--select-by", "val_unsup/nothing"])


def test_agreement_needs_an_ema_teacher():
    from lightning_uda.cli import _check_agreement
    from lightning_uda.methods import AdvEntModule

    settings = {"select_by": "val_unsup/agreement"}
    with pytest.raises(ValueError, match="no EMA teacher"):
        _check_agreement(settings, AdvEntModule(**tiny_module_kwargs()))
    _check_agreement(settings, DACSModule(**tiny_module_kwargs()))  # has one


def test_example_unlabelled_subset_is_fixed_and_has_no_labels(tmp_path, fixtures_root, capsys):
    # the data layer's unlabelled images, built as the CLI builds them, on real-format files
    import yaml
    from jsonargparse import ArgumentParser
    from torch.utils.data import Dataset

    from lightning_uda.cli import unlabelled_subset

    gta_and_cityscapes(tmp_path, fixtures_root)  # 2 Cityscapes train frames
    layer = Path(__file__).resolve().parents[2] / "examples/recipes/data/gta5_cityscapes.yaml"
    config = yaml.safe_load(layer.read_text())["checkpoints"]["unlabelled"]
    config["init_args"]["root"] = str(tmp_path / "cityscapes")
    parser = ArgumentParser()
    parser.add_argument("--unlabelled", type=Dataset)
    images = parser.instantiate_classes(parser.parse_object({"unlabelled": config})).unlabelled
    subset, again = unlabelled_subset(images, 1), unlabelled_subset(images, 1)
    assert isinstance(subset, Subset) and len(subset) == 1 and subset.indices == again.indices
    item = subset[0]
    assert set(item) == {"image"} and tuple(item["image"].shape) == (3, 512, 1024)
    assert len(unlabelled_subset(images, 500)) == 2


@pytest.mark.slow
@pytest.mark.fit
def test_gta_example_selects_by_an_unsupervised_signal(common, tmp_path, fixtures_root):
    gta_and_cityscapes(tmp_path / "data", fixtures_root)
    argv = ["--data-root", str(tmp_path / "data"), "--method", "dacs", "--encoder", "resnet18"]
    argv += ["--from-scratch", "--accelerator", "cpu", "--max-steps", "1", "--val-every", "1"]
    argv += ["--num-workers", "0", "--output", str(tmp_path / "out")]
    args = common.parse_args("x", [*argv, "--select-by", "val_unsup/entropy"])
    common.run(args, source="gta5")
    names = sorted(p.name for p in (tmp_path / "out").rglob("*.ckpt"))
    assert "last.ckpt" in names
    best = [n for n in names if n.startswith("step")]
    assert len(best) == 1 and "-entropy0." in best[0] and "-miou" in best[0], names
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {f"val_unsup/{n}" for n in SIGNALS} <= set(header) and "val/mIoU" in header


# ------------------------------------------------------------------ several targets
@pytest.mark.fit
def test_several_targets_each_scored_alone_first_under_the_plain_keys(tmp_path):
    torch.manual_seed(0)
    module = SourceOnlyModule(**tiny_module_kwargs())
    options = dict(batch_size=2, snd_pixels=300, source_frequencies=SOURCE_FREQUENCIES)
    night, fog = unlabelled(), ToyScenes(6, seed=8)
    alone = {
        name: UnsupervisedValidation(images, **options).evaluate(module)
        for name, images in (("night", night), ("fog", fog))
    }
    assert alone["night"]["entropy"] != pytest.approx(alone["fog"]["entropy"])
    both = UnsupervisedValidation({"night": night, "fog": fog}, **options)
    recorder = Recorder()
    trainer = validating_trainer(tmp_path, max_steps=1, callbacks=[both, recorder])
    trainer.fit(module, datamodule=toy_datamodule())
    # the weights changed by one step: compare with the same weights, scored alone now
    alone = {
        name: UnsupervisedValidation(images, **options).evaluate(module)
        for name, images in (("night", night), ("fog", fog))
    }
    logged = recorder.seen[-1]
    for name, values in alone.items():
        for signal, value in values.items():
            assert logged[f"val_unsup/{name}/{signal}"] == pytest.approx(value, rel=1e-6)
    for signal, value in alone["night"].items():  # the first target under the plain keys
        assert logged[f"val_unsup/{signal}"] == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match=r"no target 'rain'.*\['night', 'fog'\]"):
        both.evaluate(module, target="rain")
    with pytest.raises(TypeError, match=r"data\['fog'\] must be a Dataset"):
        UnsupervisedValidation({"night": night, "fog": [1, 2]})
