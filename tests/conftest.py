"""Shared test helpers: tiny generated datasets in torchvision's layouts, the real CLI in a
subprocess, Hydra composition of the real configs, and TensorBoard event files read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganlab.data.synthetic import digit_like, make_cifar, make_idx, make_image_folder, make_unpaired  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data dir holding every image dataset, generated once per test session and shared by scripts/test's
    xdist workers (made under a file lock), so that what is cached beside it (the metrics' classifier) is
    trained once for the whole suite."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-data"
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "shared-data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            make_idx(root, "MNIST")
            make_idx(root, "FashionMNIST", gz=True)
            make_cifar(root)
            make_image_folder(root / "images")
            make_unpaired(root / "unpaired", n=24, size=28)
            (root / ".complete").touch()
    return root


def dataset_overrides(name: str, root: Path) -> list[str]:
    if name == "image_folder":
        return [f"dataset.root={root / 'images'}"]
    if name == "unpaired":
        return [f"dataset.root_a={root / 'unpaired' / 'a'}", f"dataset.root_b={root / 'unpaired' / 'b'}",
                "dataset.resolution=32"]
    if name in ("ring8", "grid25", "mix1d", "generated"):
        return []
    if name == "stacked_mnist":
        return [f"dataset.root={root}", "dataset.download=false", "dataset.size=512"]
    return [f"dataset.root={root}", "dataset.download=false"]


def offline_env(**extra) -> dict:
    """The environment for CLI subprocesses: no terminal, no network (a dead proxy), one thread."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    dead = "http://127.0.0.1:9"
    env.update(https_proxy=dead, http_proxy=dead, HTTPS_PROXY=dead, HTTP_PROXY=dead, no_proxy="",
               OMP_NUM_THREADS="1", GANLAB_DATA_ROOT=str(extra.pop("data_root", "/nonexistent-ganlab-data")))
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """The real CLI (`python -m ganlab`, same as the `ganlab` script) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ganlab", *args], cwd=cwd, env=offline_env(**env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def cli(*args: str, cwd: Path, timeout: float | None = None, **env) -> subprocess.CompletedProcess:
    """The same CLI entry point (`ganlab.cli.main`) run in this process: what `run_cli` does minus the
    process start (about 5 s of CPU each: torch, Hydra, torch._dynamo's import at the first optimizer).
    For the tests where the process boundary is not the point (bad input, refusals, short runs read back);
    signals, launchers, torchrun and the set-up demo keep `run_cli`. Environment, cwd, argv, torch's
    threads (one, as OMP_NUM_THREADS=1 gives a subprocess), logging handlers and Hydra's global state are
    restored afterwards; stdout and stderr are captured as text."""
    import contextlib
    import io
    import logging
    import urllib.request

    import torch
    from hydra.core.global_hydra import GlobalHydra

    from ganlab.cli import main

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    threads, root = torch.get_num_threads(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ganlab_log = logging.getLogger("ganlab")
    ganlab_state = (list(ganlab_log.handlers), ganlab_log.level, ganlab_log.propagate)
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.environ.clear()
    os.environ.update(offline_env(**env))
    os.chdir(cwd)
    torch.set_num_threads(1)
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        ganlab_log.handlers[:], ganlab_log.level, ganlab_log.propagate = ganlab_state
        torch.set_num_threads(threads)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        urllib.request.install_opener(None)  # one built during the run froze the run's (dead) proxies
    return subprocess.CompletedProcess(["ganlab", *args], code, out.getvalue(), err.getvalue())


def read_events(tb_dir: Path):
    """TensorBoard's own event reader over a run's tb/ dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def compose(*overrides: str):
    """The real configs composed by Hydra, as `ganlab train` composes them (with the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ganlab.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def pytest_configure(config):
    """Under scripts/test's two xdist workers, each worker's in-process training uses one thread: two workers on
    two cores, each with torch's default of one thread per core, would oversubscribe them (OpenMP threads spin
    while they wait), and the CLI subprocesses already run with one (OMP_NUM_THREADS=1)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
