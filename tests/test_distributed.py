"""DDP through the real CLI under torchrun, on CPU with gloo: two processes hold the same weights, a 2-process
wgan_gp's first update equals a 1-process one with the same global batch and seed, only rank 0 writes, and a
2-process run killed outright and resumed ends bit-identical to one never interrupted (and resumes on 1 process
with its one-line warning)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ganlab.checkpoint import _step_of

from conftest import cli, dataset_overrides, make_idx, offline_env, read_events, run_cli

pytestmark = pytest.mark.slow  # minutes of real processes: scripts/test --quick skips these

TESTS = str(Path(__file__).resolve().parent)


def torchrun(*args: str, cwd: Path, n: int = 2, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node n -m ganlab ...` (torch.distributed.run is torchrun's module)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "ganlab", *args], cwd=cwd, env=offline_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _mnist(data, run, steps, *extra):
    return ["train", "model=wgan_gp", "dataset=mnist", f"dataset.root={data}", "dataset.download=false", "device=cpu",
            "model.width=8", "train.batch_size=16", f"train.steps={steps}", "train.log_every=5", "train.sample_every=10",
            "train.ckpt_every=10", "train.progress=plain", f"hydra.run.dir={run}", *extra]


def _nets(state):
    return {k: v for net in ("generator", "discriminator") for k, v in
            ((f"{net}.{name}", t) for name, t in state[net].items())}


def _files(run: Path) -> list[str]:
    """A run dir's files, event files and resumed Hydra dirs named by kind (their names hold pids and times)."""
    names = []
    for p in sorted(run.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(run))
            names.append("tb/<events>" if rel.startswith("tb/events.out.tfevents") else rel)
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_data")
    make_idx(root, "MNIST", n=256)
    return root


def test_two_processes_train_the_same_weights_and_only_rank_0_writes(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = cli(*_mnist(data, one, 20), cwd=tmp_path)  # the one-process reference, in this process
    r2 = torchrun(*_mnist(data, two, 20), cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    state = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    rec = state["dist"]
    assert rec["world"] == 2 and len(set(rec["weights_sha256"])) == 1  # both ranks held these very weights
    assert state["config"]["train"]["batch_size"] == 16  # the global batch, split 8 + 8
    # rank 0 alone wrote: the same files as a 1-process run, one event file, one train.log of rank 0's lines
    assert _files(two) == _files(one)
    assert len(list((two / "tb").glob("events.out.tfevents*"))) == 1
    log = (two / "train.log").read_text()
    assert "DDP over 2 processes (gloo), 8 samples each" in log and "rank 1" not in log
    ev = read_events(two / "tb")
    assert [e.step for e in ev.Scalars("Loss/D")] == [5, 10, 15, 20]
    assert [e.step for e in ev.Images("Samples/fixed_z")] == [10, 20]
    status = (two / "status.json").read_text()
    assert '"status": "ok"' in status and '"world": 2' in status


@pytest.mark.parametrize("sync_bn", [True, False])
def test_the_first_update_equals_one_process_with_the_same_global_batch(sync_bn, data, tmp_path):
    """One step of wgan_gp (5 critic updates, then G) on 2 processes x 8 vs 1 process x 16: the same data, the
    same noise (ganlab.distributed draws every per-sample number for the global batch), DDP's mean of the two
    halves' gradients. Equal to float tolerance with train.sync_bn=true. Without it, G's BatchNorm (wgan_gp's G
    has one; its critic has none) normalises each half with its own statistics, which one process never does:
    the weights then differ by far more than float noise, which is why SyncBatchNorm is there."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [f"train.sync_bn={str(sync_bn).lower()}"]
    assert cli(*_mnist(data, one, 1, *extra), cwd=tmp_path).returncode == 0
    r = torchrun(*_mnist(data, two, 1, *extra), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = (_nets(torch.load(run / "checkpoints" / "last.pt", weights_only=True)) for run in (one, two))
    assert a.keys() == b.keys()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in params)
    if sync_bn:
        assert worst < 1e-5, worst
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    else:
        assert worst > 1e-4, worst


def _popen_torchrun(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ganlab", *args], cwd=cwd, env=offline_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, start_new_session=True)


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for c in children:
            out += [c, *_descendants(c)]
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all it started, at once (torchrun's workers live in sessions of their own)."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _linked_step(ckpt_dir: Path) -> int:
    """The step of the numbered checkpoint that last.pt is a hard link to (0 while there is none)."""
    try:
        inode = (ckpt_dir / "last.pt").stat().st_ino
    except FileNotFoundError:
        return 0
    for numbered in ckpt_dir.glob("step_*.pt"):
        try:
            if numbered.stat().st_ino == inode:
                return _step_of(numbered.name)
        except FileNotFoundError:  # pruned meanwhile
            continue
    return 0


def test_a_killed_two_process_run_resumes_bit_identical_and_on_one_process_with_a_warning(data, tmp_path):
    steps = 40
    whole = _popen_torchrun(_mnist(data, tmp_path / "whole", steps), tmp_path)  # beside the killed run
    killed = tmp_path / "killed"
    proc = _popen_torchrun(_mnist(data, killed, steps), tmp_path)
    t0 = time.monotonic()
    while _linked_step(killed / "checkpoints") < 20:  # last.pt is swapped in just after the numbered file
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() - t0 < 300, "no checkpoint at step 20"
        time.sleep(0.05)
    _kill_tree(proc.pid)  # torchrun and both workers at once, as a lost node would
    proc.wait()
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    saved = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 20 <= saved < steps
    import shutil

    single = tmp_path / "single"
    shutil.copytree(killed, single)
    r = torchrun(*_mnist(data, killed, steps, "resume=true"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for part in ("generator", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for part in ("opt_g", "opt_d"):
        for index, slots in a[part]["state"].items():
            for slot, value in slots.items():
                assert torch.equal(value, b[part]["state"][index][slot]), (part, index, slot)
    # the same checkpoint on one process: it continues, saying in one line what cannot be exact
    r = cli(*_mnist(data, single, steps, "resume=true"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "resuming a checkpoint of 2 process(es) on 1" in l)
    assert "the data order, the noise and the global batch continue exactly" in line and "cannot be exact" in line
    assert torch.load(single / "checkpoints" / "last.pt", weights_only=True)["step"] == steps


@pytest.mark.parametrize("model,extra", [
    ("stylegan", ["model.r1_every=4", "model.pl_weight=2", "model.pl_every=2"]),  # lazy R1 and path length: no DDP
    ("pggan", []),       # DDP with find_unused_parameters: the layers of resolutions not in use
    ("cyclegan", []),    # four nets, two optimizers, an image pool per process
])
def test_every_kind_of_phase_trains_under_ddp(model, extra, tmp_path):
    run = tmp_path / "run"
    r = torchrun("train", f"model={model}", "debug=smoke", "train.steps=8", *extra, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["dist"]
    assert rec["world"] == 2 and len(set(rec["weights_sha256"])) == 1
    assert len(rec["objective_ranks"]) == 2


def test_a_net_trained_outside_ddp_is_caught_not_left_to_drift(tmp_path):
    """A user objective whose G phase runs G around its DDP wrapper (tests/faults.py): the ranks' gradients are
    then never averaged, and the first logging step says so instead of training two different models."""
    run = tmp_path / "run"
    r = torchrun("train", "model=gan", "dataset=ring8", "device=cpu", "model.objective=faults.BypassesDDP",
                 "train.steps=10", "train.log_every=5", f"hydra.run.dir={run}", cwd=tmp_path, PYTHONPATH=TESTS)
    assert r.returncode != 0
    assert "processes' weights differ at step 5" in r.stdout + r.stderr and "through_ddp=False" in r.stdout + r.stderr


def test_torchrun_refuses_a_sweep_and_an_uneven_batch(tmp_path):
    # a sweep is refused before joining any process group: torchrun's environment in this process shows it
    r = cli("train", "-m", "model=gan,dcgan", "dataset=ring8", cwd=tmp_path, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    assert r.returncode != 0 and "torchrun starts the processes of ONE run" in r.stdout + r.stderr
    r = torchrun("train", "dataset=ring8", "device=cpu", "train.batch_size=63", f"hydra.run.dir={tmp_path / 'odd'}",
                 cwd=tmp_path)
    assert r.returncode != 0 and "train.batch_size=63 is the global batch and must split evenly" in r.stdout + r.stderr


def test_a_submitit_job_of_two_tasks_is_one_ddp_run(tmp_path):
    """hydra/launcher=submitit_slurm's tasks_per_node, tried with submitit_local (the same job environment):
    the job's two tasks join as one DDP run (torchrun's variables set from submitit's), rank 0 alone logs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "model=gan",
                "dataset=ring8", "device=cpu", "train.steps=10", "hydra.launcher.timeout_min=5",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    rec = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["dist"]
    assert rec["world"] == 2 and len(set(rec["weights_sha256"])) == 1
    assert (run / "train.log").read_text().count("DDP over 2 processes (gloo), 32 samples each") == 1
    assert '"world": 2' in (run / "status.json").read_text()


def test_local_gpus_places_one_job_per_gpu(tmp_path):
    """hydra/launcher=local_gpus: as many joblib workers as GPUs, each holding one GPU (CUDA_VISIBLE_DEVICES) for
    its life. Two pretend GPUs (GANLAB_GPUS=0,1; the jobs themselves train on the CPU here), four jobs: two run
    at a time, never two on one GPU."""
    import json

    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "hydra/launcher=local_gpus", "model=gan", "dataset=ring8", "device=cpu",
                "train.steps=40", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path, GANLAB_GPUS="0,1",
                GANLAB_GPU_LOCKS=str(tmp_path / "locks"))
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = [json.loads((p / "status.json").read_text()) for p in sorted(sweep.iterdir()) if p.is_dir() and p.name[0].isdigit()]
    assert len(jobs) == 4 and {j["status"] for j in jobs} == {"ok"}
    assert {j["gpu"] for j in jobs} == {"0", "1"}
    by_worker = {}
    for j in jobs:
        by_worker.setdefault(j["pid"], set()).add(j["gpu"])
    assert len(by_worker) == 2 and all(len(g) == 1 for g in by_worker.values())  # a worker keeps its GPU
    for a in jobs:
        for b in jobs:
            if a is not b and a["started"] < b["ended"] and b["started"] < a["ended"]:  # at the same time
                assert a["gpu"] != b["gpu"]


def test_the_scaling_benchmark_measures_1_vs_2_processes_in_one_run(tmp_path):
    """scripts/benchmark.py --scaling N (the 1 vs N GPU table), here on 2 gloo processes: it runs and reports."""
    r = subprocess.run([sys.executable, str(Path(TESTS).parent / "scripts" / "benchmark.py"), "--scaling", "2", "--model",
                        "gan", "--size", "mnist", "--batch", "16", "--steps", "5"], cwd=tmp_path, env=offline_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "DDP weak scaling" in r.stdout and r.stdout.strip().splitlines()[-1].startswith("scaling_efficiency ")
