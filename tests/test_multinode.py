"""Nodes: --num-nodes in the fronts (global batch over devices × nodes), the launch-variable checks,
and 2 "nodes" × 1 CPU process (started with the launch variables, and by torchrun) ending
bit-identical to 1 node × 2 processes."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_uda.cli import check_launch_environment
from lightning_uda.recipes.demo import demo_config
from tests.helpers.examples import load_example


@pytest.fixture(scope="module")
def common():
    return load_example("_common")


def _print_recipe(common, *argv: str) -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.run(common.parse_args("x", [*argv, "--print-recipe"]), source="gta5")
    text = out.getvalue()
    return yaml.safe_load(text), "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))


# ------------------------------------------------------------------ the global batch over nodes
@pytest.mark.parametrize(
    ("devices", "nodes", "per_device", "lr", "steps"),
    [
        (1, 2, 1, 2.5e-4, 250_000),  # DACS' 2 + 2 over 2 processes: 1 + 1 each, as 2 devices
        (2, 2, 2, 1e-3, 62_500),  # 2 does not split over 4 processes: 2 each, k = 4
        (4, 1, 2, 1e-3, 62_500),  # the same world on one node: the same recipe
    ],
)
def test_global_batch_counts_devices_times_nodes(common, devices, nodes, per_device, lr, steps):
    config, header = _print_recipe(
        common, "--method", "dacs", "--devices", str(devices), "--num-nodes", str(nodes)
    )
    trainer, model = config["trainer"], config["model"]["init_args"]
    assert (int(trainer["devices"]), trainer["num_nodes"]) == (devices, nodes)
    assert config["data"]["init_args"]["batch_size"] == per_device
    assert model["lr"] == pytest.approx(lr)
    assert (model["total_steps"], trainer["max_steps"]) == (steps, steps)
    assert trainer["strategy"] == "ddp"
    # where a requeued SLURM job finds its checkpoint (Lightning's hpc_ckpt_<n>.ckpt)
    assert trainer["default_root_dir"] == "outputs/gta52cityscapes-dacs"
    # the world is said in the printed notes
    assert ("linear scaling rule with k = 4" in header) == (per_device == 2)
    if nodes > 1 and per_device == 1:
        assert "1 + 1 per device × 1 device × 2 nodes" in header


def test_a_global_batch_splits_over_the_nodes_or_is_refused_naming_the_fix(common):
    config, header = _print_recipe(
        common, "--method", "dacs", "--devices", "2", "--num-nodes", "2", "--global-batch", "8"
    )
    model = config["model"]["init_args"]
    assert config["data"]["init_args"]["batch_size"] == 2  # 8 = 2 per device × 2 × 2
    assert model["lr"] == pytest.approx(1e-3) and model["total_steps"] == 62_500  # k = 8 / 2
    assert "--global-batch 8: 2 + 2 per device × 2 devices × 2 nodes" in header
    with pytest.raises(SystemExit) as refused:
        _print_recipe(common, "--method", "dacs", "--num-nodes", "3", "--global-batch", "8")
    message = str(refused.value.code)
    assert "--global-batch 8 does not split over --num-nodes 3 × --devices 1" in message
    assert "choose --num-nodes among [1, 2, 4, 8]" in message
    # ClassMix pairs images within a device: 4 over 4 processes would leave 1 each
    with pytest.raises(
        SystemExit, match=r"batches of at least 2: choose --num-nodes among \[1, 2\]"
    ):
        _print_recipe(common, "--method", "classmix", "--num-nodes", "4", "--global-batch", "4")


def test_node_count_below_one_is_refused(common):
    with pytest.raises(SystemExit):
        common.parse_args("x", ["--print-recipe", "--num-nodes", "0"])


def test_other_recipe_keys_pass_through_and_unknown_flags_are_named(common, capsys):
    config, header = _print_recipe(common, "--method", "dacs", "--trainer.gradient_clip_val=1.0")
    assert config["trainer"]["gradient_clip_val"] == 1.0
    assert "--trainer.gradient_clip_val=1.0" in header
    with pytest.raises(SystemExit):
        common.parse_args("x", ["--print-recipe", "--gradient-clip", "1"])
    assert "--section.key=value" in capsys.readouterr().err


# ------------------------------------------------------------------ launch variables
def test_node_rank_without_master_addr_names_the_variable_and_the_fix():
    with pytest.raises(ValueError, match=r"NODE_RANK=1 is set but MASTER_ADDR is not.*torchrun"):
        check_launch_environment(2, {"NODE_RANK": "1", "MASTER_PORT": "29500"})
    with pytest.raises(ValueError, match=r"NODE_RANK='2' must be an integer from 0 to 1"):
        check_launch_environment(2, {"NODE_RANK": "2", "MASTER_ADDR": "node0"})
    with pytest.raises(ValueError, match=r"num_nodes=2 .* NODE_RANK is not set"):
        check_launch_environment(2, {"MASTER_ADDR": "node0"})
    check_launch_environment(2, {"NODE_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "1"})
    check_launch_environment(1, {})  # one machine: nothing needed
    check_launch_environment(1, {"NODE_RANK": "0"})  # node 0 of one: Lightning's 127.0.0.1


# ------------------------------------------------------------------ 2 nodes × 1 = 1 node × 2
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(
    tmp_path: Path, name: str, devices: int, nodes: int, launcher: list[str] | None = None
) -> list[str]:
    config = tmp_path / "demo.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(demo_config("dacs")))
    return [
        *(launcher or [sys.executable]), "-m", "lightning_uda.cli", "fit", "--config", str(config),
        "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        f"--trainer.num_nodes={nodes}", "--trainer.strategy=ddp", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path / name}",
        "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=4",
        "--data.init_args.source.init_args.num_images=16",
        "--data.init_args.target.init_args.num_images=16",
        "--data.init_args.val.init_args.num_images=8",
        "--checkpoints.select_by=last", f"--checkpoints.dirpath={tmp_path / name / 'ckpts'}",
    ]  # fmt: skip


def _environment(**launch: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", **launch}


def _finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=400)
    assert process.returncode == 0, out[-3000:]


@pytest.mark.fit
@pytest.mark.ddp
@pytest.mark.slow
def test_two_nodes_of_one_process_end_bit_identical_to_one_node_of_two(tmp_path):
    # one node, two processes: Lightning starts the second itself
    single = subprocess.Popen(
        _command(tmp_path, "one_node", devices=2, nodes=1), env=_environment(),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _finish(single)
    # two "nodes" of one process each, started as torchrun (or a cluster) would start them
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            _command(tmp_path, "two_nodes", devices=1, nodes=2),
            env=_environment(
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank),
                LOCAL_RANK="0", WORLD_SIZE="2",
            ),
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for process in nodes:
        _finish(process)
    # and through torchrun, as docs/cluster.md starts it: one agent per node
    port = str(_free_port())
    agents = [
        subprocess.Popen(
            _command(
                tmp_path, "torchrun", devices=1, nodes=2,
                launcher=[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                          "--nproc-per-node", "1", "--node-rank", str(rank),
                          "--master-addr", "127.0.0.1", "--master-port", port],
            ),
            env=_environment(), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for process in agents:
        _finish(process)
    want = torch.load(tmp_path / "one_node" / "ckpts" / "last.ckpt", weights_only=False)
    for launch in ("two_nodes", "torchrun"):
        got = torch.load(tmp_path / launch / "ckpts" / "last.ckpt", weights_only=False)
        _assert_same_run(want, got)


def _assert_same_run(want: dict, got: dict) -> None:
    assert got["global_step"] == want["global_step"] == 3
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    # every rank's random state and BatchNorm statistics (exact resume), rank by rank
    for part in ("rng", "torch_rng"):
        for rank, (a, b) in enumerate(zip(want["uda"][part], got["uda"][part], strict=True)):
            assert torch.equal(a, b), f"{part} of rank {rank}"
    buffers = want["uda"]["rank_buffers"], got["uda"]["rank_buffers"]
    if buffers[0] is not None:
        for a, b in zip(buffers[0]["values"], buffers[1]["values"], strict=True):
            assert torch.equal(a, b)
