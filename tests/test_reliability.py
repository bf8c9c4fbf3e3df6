"""Reliability: exact resume after SIGKILL, clean stop on SIGTERM, divergence that keeps the last
good checkpoint, numbered checkpoints, and resumes that refuse what does not fit."""

import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.train import train
from conftest import cli, compose, make_idx, make_image_folder, offline_env, read_events, run_cli


def _args(model, data, run, steps, *extra):
    return ["train", f"model={model}", "dataset=mnist", f"dataset.root={data}", "dataset.download=false",
            "device=cpu", f"train.steps={steps}", "train.batch_size=16", "model.width=8", "train.ckpt_every=20",
            "train.log_every=10", "train.sample_every=50", f"hydra.run.dir={run}", *extra]


def _popen(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "ganlab", *args], cwd=cwd, env=offline_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def _wait_for(predicate, proc, timeout=120):
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _sleep_unless(predicate, seconds):
    """Sleep for `seconds`, or less when `predicate` comes true first: a kill at a random moment that still
    comes before the run's next checkpoint, however fast the machine trains (a plain sleep let a fast run
    reach its last step before the last kill)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not predicate():
        time.sleep(0.01)


def _last_step(run) -> int:
    """The step checkpoints/last.pt holds (0 before there is one), read from the numbered file it is a
    hard link to. A numbered file appears before last.pt is swapped onto it, so waiting on the numbered
    files alone and killing at once can leave last.pt one checkpoint behind."""
    try:
        inode = (run / "checkpoints" / "last.pt").stat().st_ino
    except FileNotFoundError:
        return 0
    for p in (run / "checkpoints").glob("step_*.pt"):
        try:
            if p.stat().st_ino == inode:
                return int(p.stem.split("_")[1])
        except FileNotFoundError:  # rotated away meanwhile
            continue
    return 0


def _assert_same_training_state(a, b, nets=("generator", "discriminator"), optimizers=("opt_g", "opt_d")):
    assert a["step"] == b["step"]
    for part in nets:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for part in optimizers:
        for index, slots in a[part]["state"].items():
            for slot, value in slots.items():
                assert torch.equal(value, b[part]["state"][index][slot]), (part, index, slot)


@pytest.mark.slow
@pytest.mark.parametrize("model,n_kills", [("dcgan", 3), ("wgan_gp", 8)])
def test_sigkills_in_a_row_each_resumed_end_bit_identical(model, n_kills, tmp_path):
    """SIGKILL at random moments in a row (during start-up, mid-step, mid-checkpoint-write, ...), 8 times for
    wgan_gp and 3 for dcgan, each time resumed with resume=auto: the run ends bit-identical to one never
    interrupted."""
    data = tmp_path / "data"
    make_idx(data, n=200)
    # each kill comes at most two checkpoints (every 20 steps) after the one before: room for all, one to spare
    steps = 40 * n_kills + 20
    whole = _popen(_args(model, data, tmp_path / "whole", steps), tmp_path)  # beside the killed runs: 2 cores

    run, rng, kills = tmp_path / "killed", random.Random(), []
    for _ in range(n_kills):
        done = _last_step(run)
        proc = _popen(_args(model, data, run, steps, "resume=auto"), tmp_path)
        if rng.random() < 0.3:  # anywhere: start-up, data loading, the first steps
            _sleep_unless(lambda: _last_step(run) > done, rng.uniform(0.0, 4.0))
        else:  # a random moment after the run has made progress
            _wait_for(lambda: _last_step(run) > done, proc)
            reached = _last_step(run)
            _sleep_unless(lambda: _last_step(run) > reached, rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills.append(_last_step(run))  # what resume=auto finds
    assert kills[-1] < steps

    resumed = run_cli(*_args(model, data, run, steps), "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    whole_out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, whole_out
    assert ("resuming at step" in resumed.stdout) == bool(kills[-1]), (kills, resumed.stdout)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == steps
    _assert_same_training_state(a, b)
    # the TensorBoard logs continue without duplicate steps
    logged = [e.step for e in read_events(run / "tb").Scalars("Loss/D")]
    assert logged == sorted(set(logged)) and logged[-1] == steps
    assert logged == [e.step for e in read_events(tmp_path / "whole" / "tb").Scalars("Loss/D")]


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    """last.pt (a hard link to the newest numbered file) cut short: resume warns, continues from the
    newest numbered checkpoint that loads, and still ends bit-identical to an uninterrupted run."""
    def run(where, steps, *extra):
        cfg = compose("model=gan", "dataset=ring8", "device=cpu", f"train.steps={steps}", "train.ckpt_every=10",
                      "train.log_every=10", "train.keep_ckpts=3", "train.progress=none", *extra)
        return train(cfg, where)

    run(tmp_path / "whole", 40)
    run(tmp_path / "run", 30)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # step_00000030.pt is the same file
    with caplog.at_level("INFO", logger="ganlab"):
        run(tmp_path / "run", 40, "resume=true")
    assert "cannot be read; resuming from step_00000020.pt (step 20), the newest intact checkpoint" in caplog.text
    assert "step_00000030.pt (" in caplog.text and "resuming at step 20" in caplog.text
    _assert_same_training_state(torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True),
                                torch.load(last, weights_only=True))

    for numbered in (tmp_path / "run" / "checkpoints").glob("step_*.pt"):  # nothing intact left: one clear error
        numbered.write_bytes(b"not a checkpoint")
    last.write_bytes(b"")
    with pytest.raises(GanlabError, match="no checkpoint in .* can be read"):
        run(tmp_path / "run", 50, "resume=true")


def test_a_resume_from_an_older_checkpoint_sets_the_abandoned_future_aside(tmp_path, caplog):
    """Resuming from step 20 of a run that reached 40 abandons steps 30 and 40: they are moved (not deleted) to
    checkpoints/abandoned-after-20/, so when the new branch's last.pt is later unreadable the fall-back lands on
    the new branch's newest intact file, never on the abandoned step 40."""
    def run(steps, *extra):
        cfg = compose("model=gan", "dataset=ring8", "device=cpu", f"train.steps={steps}", "train.ckpt_every=10",
                      "train.log_every=5", "train.keep_ckpts=5", "train.progress=none", *extra)
        return train(cfg, tmp_path / "run")

    ckpts = tmp_path / "run" / "checkpoints"
    run(40)
    with caplog.at_level("WARNING", logger="ganlab"):
        run(25, f"resume={ckpts / 'step_00000020.pt'}")
    aside = ckpts / "abandoned-after-20"
    assert sorted(p.name for p in aside.iterdir()) == ["last.pt", "step_00000030.pt", "step_00000040.pt"]
    assert torch.load(aside / "last.pt", weights_only=True)["step"] == 40  # kept whole
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["last.pt", "step_00000010.pt", "step_00000020.pt",
                                                          "step_00000025.pt"]
    assert "moved to" in caplog.text and "abandoned-after-20" in caplog.text
    last = ckpts / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 25
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # and step_00000025.pt, the same file
    from ganlab.checkpoint import load_latest

    state, path = load_latest(ckpts)
    assert path.name == "step_00000020.pt" and state["step"] == 20
    run(30, "resume=true")  # the fall-back again, through the loop: 25 (unreadable) and its last.pt set aside too
    assert sorted(p.name for p in (ckpts / "abandoned-after-20-2").iterdir()) == ["last.pt", "step_00000025.pt"]
    assert torch.load(last, weights_only=True)["step"] == 30


def test_image_folder_resume_reads_on_where_it_stopped(tmp_path):
    """The DataLoader path (workers) resumes in the same data order: a run stopped at step 10
    (mid-epoch) and resumed to 24 ends bit-identical to one that ran 24 steps."""
    images = tmp_path / "images"
    make_image_folder(images, n=40)

    def run(where, steps, *extra):
        cfg = compose("model=dcgan", "dataset=image_folder", f"dataset.root={images}", "dataset.resolution=32",
                      "device=cpu", f"train.steps={steps}", "train.batch_size=8", "model.width=8",
                      "train.num_workers=2", "train.progress=none", "train.log_every=2", "train.sample_every=100",
                      *extra)
        train(cfg, where)
        return torch.load(where / "checkpoints" / "last.pt", weights_only=True)

    whole = run(tmp_path / "whole", 24)
    run(tmp_path / "parts", 10)  # 40 images / batch 8 = 5 batches an epoch: stops mid-epoch 2
    resumed = run(tmp_path / "parts", 24, "resume=true")
    assert resumed["step"] == whole["step"] == 24
    for part in ("generator", "discriminator"):
        for key in whole[part]:
            assert torch.equal(whole[part][key], resumed[part][key]), (part, key)


def test_sigterm_checkpoints_the_current_step_and_exits_0(tmp_path):
    run = tmp_path / "run"
    proc = _popen(["train", "model=gan", "dataset=ring8", "device=cpu", "train.steps=1000000",
                   "train.ckpt_every=1000000", "train.log_every=50", f"hydra.run.dir={run}"], tmp_path)
    _wait_for(lambda: any((run / "tb").glob("events.*")) if (run / "tb").exists() else False, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    match = re.search(r"SIGTERM received at step (\d+)/1000000", out)
    assert match, out
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == int(match.group(1)) > 0
    assert "resume=true" in out


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """A healthy run to step 10, continued with a learning rate that blows up at once."""
    run = tmp_path / "run"
    common = ["train", "model=wgan_gp", "dataset=ring8", "device=cpu", "penalty=none", "train.n_critic=1",
              "train.ckpt_every=5", "train.log_every=5", f"hydra.run.dir={run}"]
    assert cli(*common, "train.steps=10", cwd=tmp_path).returncode == 0
    good = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    out = cli(*common, "train.steps=400", "optimizer.lr=1e8", "resume=true", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    match = re.search(r"training diverged: a loss became NaN/Inf at step (\d+); the last good checkpoint "
                      r"\(step 10\) is kept in", out.stderr)
    assert match and int(match.group(1)) > 10, out.stderr
    assert "Traceback" not in out.stderr
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 10
    for key, value in good["generator"].items():
        assert torch.equal(state["generator"][key], value)


def test_on_nan_skip_skips_and_counts(tmp_path):
    from conftest import compose
    from ganlab.train import train

    cfg = compose("model=wgan_gp", "dataset=ring8", "device=cpu", "penalty=none", "train.n_critic=1",
                  "optimizer.lr=1e8", "train.steps=30", "train.on_nan=skip", "train.progress=none",
                  "train.log_every=10", "train.ckpt_every=1000")
    result = train(cfg, tmp_path)
    assert result["step"] == 30 and result["skipped_updates"] > 0
    assert "Train/skipped_updates" in read_events(tmp_path / "tb").Tags()["scalars"]


def test_only_the_newest_numbered_checkpoints_are_kept(tmp_path):
    out = cli("train", "dataset=ring8", "device=cpu", "train.steps=40", "train.ckpt_every=5",
                  "train.keep_ckpts=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["last.pt", "step_00000035.pt", "step_00000040.pt"]


def test_resume_path_continues_that_run_in_its_own_dir(tmp_path):
    run = tmp_path / "run"
    first = cli("train", "dataset=ring8", "device=cpu", "train.steps=10", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    more = cli("train", "dataset=ring8", "device=cpu", "train.steps=20", f"resume={run / 'checkpoints' / 'last.pt'}",
                   cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 20
    assert not (tmp_path / "outputs").exists()


def test_resuming_with_another_model_says_what_differs(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "model=gan", "dataset=ring8", "train.steps=3", f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    out = cli("train", "model=wgan_gp", "dataset=ring8", "train.steps=6", f"hydra.run.dir={run}", "resume=true",
                  cwd=tmp_path)
    assert out.returncode == 2
    assert "model.name: 'gan' in the checkpoint, 'wgan_gp' now" in out.stderr and "Traceback" not in out.stderr
    out = cli("train", "model=gan", "dataset=grid25", "train.steps=6", f"hydra.run.dir={run}", "resume=true",
                  cwd=tmp_path)
    assert out.returncode == 2 and "dataset.name: 'ring8' in the checkpoint, 'grid25' now" in out.stderr
