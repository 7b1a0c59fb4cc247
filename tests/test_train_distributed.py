import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import siamese.episodes
import tasks.train
from siamese.config import TrainConfig
from siamese.distributed import deterministic, rank_device, setup_distributed
from siamese.errors import PipelineError
from siamese.model import build_model, load_model
from siamese.objectives import EpisodeLoss, lr_at, make_optimizer
from tests.training import params_with, train_project

pytestmark = pytest.mark.slow  # torchrun and spawned ranks: not in `make check`

SMALL = {"steps": 4, "eval_every": 2, "episode_alphabets": 2, "episode_characters": 4,
         "threads": 1}


def test_two_process_torchrun_on_cpu_trains_and_writes_a_checkpoint(tmp_path,
                                                                    synthetic_data_root):
    train_project(tmp_path, synthetic_data_root, steps=6, eval_every=3, episode_alphabets=2,
                  episode_characters=4, threads=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tools.cli", "train", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model, meta = load_model(tmp_path / "models/model.pt", "cpu")
    assert meta["step"] in (3, 6)
    assert (tmp_path / "models/checkpoints/last.pt").exists()
    assert (tmp_path / "reports/train/metrics.json").exists()


@pytest.mark.parametrize(("requested", "local_rank", "gpus", "expected"), [
    ("cpu", 0, 0, ("cpu", "gloo")),
    ("cpu", 1, 8, ("cpu", "gloo")),  # --device cpu on a GPU machine: gloo, not nccl
    ("cuda", 0, 2, ("cuda:0", "nccl")),
    ("cuda", 1, 2, ("cuda:1", "nccl")),  # plain cuda: the rank's own GPU
    ("cuda:2", 0, 4, ("cuda:2", "nccl")),
    ("cuda:2", 1, 4, ("cuda:3", "nccl")),  # cuda:N: the ranks' GPUs start at N
])
def test_each_rank_gets_its_device_and_the_backend_for_it(requested, local_rank, gpus,
                                                         expected):
    device, backend = rank_device(torch.device(requested), local_rank, gpus)
    assert (str(device), backend) == expected


@pytest.mark.parametrize(("requested", "local_rank", "index"), [("cuda:1", 1, 2), ("cuda", 2, 2)])
def test_a_rank_past_the_last_gpu_is_a_clear_error(requested, local_rank, index):
    with pytest.raises(PipelineError, match=f"local rank {local_rank} on cuda:{index}, but "
                                            r"this machine has 2 GPU\(s\)"):
        rank_device(torch.device(requested), local_rank, 2, "siamese train --device")


def test_one_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = TrainConfig.parse(params_with(device="cuda"))
    device, rank, world = setup_distributed(cfg, "cpu")  # --device wins over train.device
    assert (device, rank, world) == (torch.device("cpu"), 0, 1)
    assert not torch.distributed.is_initialized()


def rank_process(rank: int, folders: list[Path], dump: Path, port: int, params: dict) -> None:
    """One rank of a 2-process run of the real training: in its own folder, recording its
    episodes, its first batch, its weights after the first step and at the end."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(len(folders)))
    os.chdir(folders[rank])
    seen: dict = {"episodes": [], "batches": [], "weights": []}
    sample, batch, step = (siamese.episodes.sample_episode, tasks.train.next_batch,
                           tasks.train.train_step)

    def sample_episode(*args, **kwargs):
        episode = sample(*args, **kwargs)
        seen["episodes"].append(episode[:2])
        return episode

    def next_batch(*args, **kwargs):
        x, side = batch(*args, **kwargs)
        seen["batches"].append((x.clone(), side.clone()))
        return x, side

    def train_step(state, *args, **kwargs):
        out = step(state, *args, **kwargs)
        seen["weights"].append({k: v.detach().clone() for k, v in state.net.named_parameters()})
        return out

    siamese.episodes.sample_episode = sample_episode
    tasks.train.next_batch, tasks.train.train_step = next_batch, train_step
    tasks.train.run(params, device="cpu")
    torch.save(seen, dump / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_step_by_hand(params: dict, batches: list) -> dict:
    """The weights after one step on the average of the ranks' gradients, computed here."""
    cfg = TrainConfig.parse(params)
    with deterministic(cfg):  # the threads and convolution kernels the ranks train with
        torch.manual_seed(cfg.seed)
        net = build_model(cfg.arch, cfg.image_size, **cfg.model_options())
        net = net.to(memory_format=torch.channels_last)
        objective, optimizer = EpisodeLoss(net), make_optimizer(cfg, net)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, 1)
        grads = []
        for x, side in batches:
            optimizer.zero_grad(set_to_none=True)
            objective(x, side).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, *rank_grads in zip(net.parameters(), *grads, strict=True):
            p.grad = sum(rank_grads) / len(rank_grads)
        optimizer.step()
    return {k: v.detach() for k, v in net.named_parameters()}


def test_two_ranks_average_their_gradients_draw_their_own_episodes_and_only_rank_0_writes(
        tmp_path, synthetic_data_root):
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    params = train_project(folders[0], synthetic_data_root, **SMALL)
    train_project(folders[1], synthetic_data_root, **SMALL)
    dump = tmp_path / "dump"
    dump.mkdir()
    mp.spawn(rank_process, args=(folders, dump, free_port(), params), nprocs=2, join=True)
    seen = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # (b) each rank its own episodes, at every step
    assert [len(s["episodes"]) for s in seen] == [4, 4]
    for (s0, q0), (s1, q1) in zip(seen[0]["episodes"], seen[1]["episodes"], strict=True):
        assert not (len(s0) == len(s1) and (s0 == s1).all() and (q0 == q1).all())
    # (a) the gradients are averaged: one step is the hand-made step on the mean gradient,
    # and the ranks end with the same weights, those rank 0 saved
    by_hand = first_step_by_hand(params, [s["batches"][0] for s in seen])
    for name, value in by_hand.items():
        assert torch.equal(seen[0]["weights"][0][name], value), name
    for name, value in seen[0]["weights"][-1].items():
        assert torch.equal(seen[1]["weights"][-1][name], value), name
    saved = torch.load(folders[0] / "models/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in seen[0]["weights"][-1].items())
    # (c) rank 1 wrote nothing; rank 0 wrote the model, the state and the reports
    assert sorted(p.name for p in folders[1].iterdir()) == ["data", "params.yaml"]
    assert (folders[0] / "models/model.pt").exists()
    assert (folders[0] / "reports/train").is_dir()
