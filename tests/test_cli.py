"""The real CLI in a subprocess: help, a real MNIST-layout run read back from its TensorBoard
events, a multirun sweep, and one clear message (no traceback) for every bad input."""

import json
import re
import shlex

import pytest
import torch

from conftest import REPO, make_idx, make_image_folder, read_events, cli, run_cli


@pytest.mark.slow
def test_the_readme_demo_ends_in_a_visible_success_and_says_where_to_look(tmp_path):
    """The set-up command's demo, as the README has it: all 8 modes of ring8 by the strict rule,
    most samples on a mode, and the last lines name the run dir, TensorBoard and the mode count."""
    setup = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("python3 -m venv"))
    demo = shlex.split(setup.split(".venv/bin/ganlab ", 1)[1])
    run = tmp_path / "demo"
    out = run_cli(*demo, f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads((run / "status.json").read_text())
    metrics = status["metrics"]
    # what the run cost: the training loop's wall and CPU time (every thread of the process) beside the job's
    assert 0 < status["train_cpu_s"] and 0 < status["train_wall_s"] <= status["wall_s"], status
    assert metrics["Metrics/modes_captured_strict"] == 8 and metrics["Metrics/high_quality"] >= 0.8, metrics
    last = out.stdout.strip().splitlines()[-3:]
    assert re.search(r"done: step \d+ in [\d.]+s: 8 of 8 modes \(8 with >= 1% of the samples\), \d+\.\d% of samples", last[0])
    assert last[1].strip() == f"run dir: {run}" and last[2].strip() == f"TensorBoard: tensorboard --logdir {run / 'tb'}"


def test_the_eta_counts_with_the_time_budget(tmp_path):
    """train.max_minutes ends the run before train.steps would: the ETA says so (not 48 hours)."""
    out = cli("train", "model=gan", "dataset=ring8", "device=cpu", "train.steps=10000000", "train.max_minutes=0.05",
                  "train.log_every=50", "train.ckpt_every=10000000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    etas = [tuple(map(int, m)) for m in re.findall(r"ETA (\d+):(\d\d):(\d\d)", out.stdout)]
    assert etas and all(h * 3600 + m * 60 + s <= 3 for h, m, s in etas), etas
    assert "train.max_minutes=0.05 reached" in out.stdout


def test_top_level_help_lists_the_commands(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0 and "train" in out.stdout
    bad = run_cli("trian", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr and "Traceback" not in bad.stderr


def test_train_help_lists_every_group(tmp_path):
    out = cli("train", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for line in ("dataset: cifar10, fashion_mnist, generated, grid25, image_folder, mix1d, mnist, ring8",
                 "loss: hinge, least_squares, minimax, nonsaturating, wasserstein"):
        assert line in out.stdout
    assert "model:" in out.stdout and "wgan_gp" in out.stdout


def test_shell_completion(tmp_path):
    install = cli("train", "-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion ganlab" in install.stdout
    query = cli("-sc", "query=bash", cwd=tmp_path, COMP_LINE="ganlab train model=wg")
    assert query.returncode == 0 and "model=wgan_gp" in query.stdout.split()


@pytest.mark.slow
def test_wgan_gp_trains_on_mnist_from_a_data_dir(tmp_path):
    """Must-show 3: `ganlab train model=wgan_gp dataset=mnist dataset.root=DIR device=cpu train.steps=200`."""
    data = tmp_path / "data"
    make_idx(data, "MNIST", n=256)
    run = tmp_path / "run"
    out = run_cli("train", "model=wgan_gp", "dataset=mnist", f"dataset.root={data}", "device=cpu",
                  "train.steps=200", "train.batch_size=16", "model.width=16", "train.sample_every=100",
                  "train.log_every=25", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "step 200/200" in out.stdout  # plain progress lines when not a terminal
    acc = read_events(run / "tb")
    assert [e.step for e in acc.Scalars("Loss/D")] == list(range(25, 201, 25))
    assert len(acc.Scalars("Loss/G")) == 8 and len(acc.Scalars("Loss/penalty")) == 8
    assert {"D/critic_real", "D/critic_fake", "Grad/D_norm", "Grad/G_norm", "Perf/images_per_s"} <= set(acc.Tags()["scalars"])
    grids = acc.Images("Samples/fixed_z")
    assert [g.step for g in grids] == [100, 200] and grids[0].width > 28 * 7
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 200 and state["config"]["dataset"]["root"] == str(data)


def test_multirun_makes_one_run_dir_per_job(tmp_path):
    """Must-show 5: `ganlab train -m model=gan,wgan_gp dataset=ring8 train.steps=50`."""
    sweep = tmp_path / "sweep"
    out = cli("train", "-m", "model=gan,wgan_gp", "dataset=ring8", "train.steps=50", "device=cpu",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_dataset=ring8,model=gan,train.steps=50",
                                      "1_dataset=ring8,model=wgan_gp,train.steps=50"]
    for run in runs:
        acc = read_events(run / "tb")
        assert acc.Scalars("Loss/D")[-1].step == 50
        assert "Samples/scatter" in acc.Tags()["images"]


def test_default_run_dir_is_named_after_model_and_dataset(tmp_path):
    out = cli("train", "model=gan", "dataset=grid25", "train.steps=5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "outputs").glob("*/*_gan-grid25")
    assert (run / "checkpoints" / "last.pt").is_file() and list((run / "tb").iterdir())


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    out = cli("train", "-m", "model=dcgan,gan", "dataset=ring8", "train.steps=5",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 1
    assert "needs images" in out.stderr and "1 job(s) of the sweep failed" in out.stderr
    status = json.loads((tmp_path / "sweep" / "0_dataset=ring8,model=dcgan,train.steps=5" / "status.json").read_text())
    assert status["status"] == "failed" and "needs images" in status["error"]
    assert (tmp_path / "sweep" / "1_dataset=ring8,model=gan,train.steps=5" / "checkpoints" / "last.pt").is_file()


BAD_INPUTS = [
    # (overrides, exit code, a fragment of the one message)
    (["model=stylegan9"], 1, "Could not find 'model/stylegan9'"),
    (["loss=hinge2"], 1, "Could not find 'loss/hinge2'"),
    (["modle=gan"], 1, "Could not override 'modle'"),
    (["train.stepz=5"], 1, "Key 'stepz' is not in struct"),
    (["train.batch_size=0"], 2, "train.batch_size=0 is not valid"),
    (["optimizer.lr=-1e-4"], 2, "optimizer.lr=-0.0001 is not valid"),
    (["train.steps=many"], 2, "train.steps='many' is not valid"),
    (["train.on_nan=maybe"], 2, "train.on_nan='maybe' is not valid"),
    (["tricks.label_smoothing=2"], 2, "tricks.label_smoothing=2 is not valid"),
    (["loss=wasserstein", "tricks.label_smoothing=0.1"], 2, "need a loss with targets"),
    (["device=cuda"] if not torch.cuda.is_available() else ["device=tpu"], 2, "device="),
    (["model=dcgan", "dataset=ring8"], 2, "cannot train on points data"),
    (["model=cgan", "dataset=image_folder", "dataset.root={images}"], 2, "needs a labelled dataset"),
    (["dataset=mnist", "dataset.root={empty}"], 2, "mnist data not found"),
    (["dataset=fashion_mnist", "dataset.root={empty}", "dataset.system_dirs=[]"], 2, "fashion_mnist data not found"),
    (["dataset=cifar10", "dataset.root={empty}"], 2, "cifar10 data not found"),
    (["dataset=stacked_mnist", "dataset.root={empty}"], 2, "mnist data not found"),
    (["dataset=stacked_mnist", "dataset.root={data}", "dataset.size=0"], 2, "dataset.size=0 is not valid"),
    (["dataset=ring8", "eval.features=inceptoin"], 2, "eval.features='inceptoin' is not valid"),
    (["dataset=ring8", "eval.metrics=[fd,fid]"], 2, "eval.metrics: fid unknown"),
    (["dataset=ring8", "eval.every=10", "eval.metrics=[fd,is]"], 2, "need class probabilities"),
    (["dataset=ring8", "train.lr_decay_from=1.5"], 2, "train.lr_decay_from=1.5 is not valid"),
    (["dataset=mnist", "dataset.root={corrupt}"], 2, "truncated or corrupt"),
    (["dataset=image_folder"], 2, "dataset.root=DIR"),
    (["dataset=image_folder", "dataset.root={empty}"], 2, "no images"),
    (["dataset=mnist", "dataset.root={data}", "train.batch_size=100000"], 2, "larger than the dataset"),
    (["dataset=ring8", "hydra.run.dir={afile}/run"], 2, "is not a directory; choose another hydra.run.dir"),
    (["dataset=ring8", "hydra.run.dir={good}"], 2, "already holds a run"),
    (["dataset=ring8", "resume=true"], 2, "holds no checkpoints/last.pt"),
    (["dataset=ring8", "resume={empty}/nothing.pt"], 2, "no such run dir or checkpoint"),
    (["dataset=ring8", "resume={truncated}"], 2, "is truncated, corrupt or not a ganlab checkpoint"),
    (["dataset=ring8", "resume={foreign}"], 2, "is not a ganlab checkpoint"),
    (["dataset=ring8", "model=wgan_gp", "resume={good}"], 2, "trained with another model or dataset"),
]


@pytest.fixture(scope="module")
def bad_input_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    files = {"empty": root / "empty", "data": root / "data", "corrupt": root / "corrupt", "images": root / "images",
             "afile": root / "afile", "good": root / "good"}
    files["empty"].mkdir()
    make_idx(files["data"], n=20)
    make_idx(files["corrupt"], n=20)
    raw = files["corrupt"] / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:1000])
    make_image_folder(files["images"], n=3)
    files["afile"].write_text("not a directory\n")
    out = cli("train", "dataset=ring8", "train.steps=3", f"hydra.run.dir={files['good']}", cwd=root)
    assert out.returncode == 0, out.stderr
    checkpoint = files["good"] / "checkpoints" / "last.pt"
    files["truncated"] = root / "truncated.pt"
    files["truncated"].write_bytes(checkpoint.read_bytes()[:5000])
    files["foreign"] = root / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    return files


def test_the_bad_input_table_is_large():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("overrides,code,fragment", BAD_INPUTS)
def test_bad_input_ends_in_one_clear_message(overrides, code, fragment, bad_input_files, tmp_path):
    args = [o.format(**bad_input_files) for o in overrides]
    if not any(a.startswith(("hydra.run.dir=", "resume=/")) for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    good = bad_input_files["good"]
    before = {p: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    out = cli("train", "train.steps=2", *args, cwd=tmp_path)
    assert out.returncode == code, out.stdout + out.stderr
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    # nothing already written is lost
    assert {p: p.read_bytes() for p in good.rglob("*") if p.is_file() and p in before} == before
