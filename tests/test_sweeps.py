"""Sweeps: parallel jobs with the joblib launcher, submitit_local, an Optuna search that survives a
failed trial, TensorBoard HParams read back from the event files, and `ganlab report`."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import cli, offline_env, read_events, run_cli

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the sweeps extra: pip install -e .[sweeps]")


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """Must-show 1: `ganlab train -m hydra/launcher=joblib model=gan,wgan_gp dataset=ring8 train.steps=50`."""
    root = tmp_path_factory.mktemp("joblib")
    out = run_cli("train", "-m", "hydra/launcher=joblib", "model=gan,wgan_gp", "dataset=ring8", "train.steps=50",
                  "device=cpu", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    return root / "sweep"


def _status(run):
    return json.loads((run / "status.json").read_text())


def _read(path):
    return path.read_text() if path.is_file() else ""


@pytest.mark.slow
def test_joblib_runs_the_jobs_in_parallel_processes_with_split_threads(joblib_sweep):
    runs = sorted(p for p in joblib_sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_dataset=ring8,model=gan,train.steps=50",
                                      "1_dataset=ring8,model=wgan_gp,train.steps=50"]
    a, b = (_status(r) for r in runs)
    assert a["status"] == b["status"] == "ok"
    assert a["pid"] != b["pid"]  # two worker processes
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # at the same time
    assert a["threads"] == b["threads"] == 1  # n_jobs=-1: the cores are split, not oversubscribed


@pytest.mark.slow
def test_report_lists_every_run_with_its_metrics(joblib_sweep, tmp_path):
    out = cli("report", str(joblib_sweep), "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert row["steps"] == "50/50" and "Loss/D" in row and "Metrics/modes_captured" in row
    table = cli("report", str(joblib_sweep), cwd=tmp_path)
    assert table.returncode == 0 and "2 runs" in table.stdout and "wgan_gp" in table.stdout and "ok" in table.stdout
    sorted_csv = cli("report", str(joblib_sweep), "--format", "csv", "--sort", "Loss/penalty", cwd=tmp_path)
    first = list(csv.DictReader(io.StringIO(sorted_csv.stdout)))[0]
    assert "wgan_gp" in first["run"]  # the only run with a penalty sorts first
    bad = cli("report", str(joblib_sweep), "--sort", "FID", cwd=tmp_path)
    assert bad.returncode == 2 and "no run has that column" in bad.stderr


@pytest.mark.slow
def test_hparams_are_read_back_from_the_event_files(joblib_sweep):
    from tensorboard.plugins.hparams import plugin_data_pb2

    seen = {}
    for run in sorted(p for p in joblib_sweep.iterdir() if p.is_dir()):
        content = read_events(run / "tb").PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        hp = {k: v.string_value or v.number_value for k, v in start.session_start_info.hparams.items()}
        metrics = {m.name.tag for m in experiment.experiment.metric_infos}
        assert {"Loss/D", "Loss/G", "Metrics/reverse_kl"} <= metrics
        seen[hp["model"]] = hp
    assert set(seen) == {"gan", "wgan_gp"}
    assert seen["wgan_gp"]["loss"] == "wasserstein" and seen["gan"]["loss"] == "nonsaturating"
    assert seen["gan"]["train.steps"] == 50


def test_optuna_search_survives_a_failed_trial_and_the_report_shows_the_best(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    out = cli("train", "-m", "hparams_search=ring8_optuna", "train.steps=60", "hydra.sweeper.n_trials=4",
                  "train.n_critic=choice(0,1)", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    statuses = {p.name: _status(p)["status"] for p in sweep.iterdir() if p.is_dir()}
    assert len(statuses) == 4
    assert "failed" in statuses.values() and "ok" in statuses.values(), statuses
    assert out.returncode == 1 and "job(s) of the sweep failed" in out.stderr  # the study itself finished
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    report = cli("report", str(sweep), "--sort", "Metrics/reverse_kl", "--format", "json", cwd=tmp_path)
    rows = json.loads(report.stdout)
    assert rows[0]["Metrics/reverse_kl"] == pytest.approx(best)
    assert [r["status"] for r in rows][-1] == "failed"
    assert any("train.n_critic=0 is not valid" in r["error"] for r in rows)


def test_an_optuna_study_whose_trials_all_fail_ends_in_one_line_naming_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    out = cli("train", "-m", "hparams_search=ring8_optuna", "train.steps=5", "hydra.sweeper.n_trials=2",
                  "optimizer.lr_g=-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ganlab: error: every trial of the sweep failed (2 of 2)")
    assert last.count("optimizer.lr_g=-1 is not valid") == 2 and f"ganlab report {sweep}" in last


def test_the_documented_optuna_sweeper_without_optimize_metric_optimizes_the_data_default(tmp_path):
    """`-m hydra/sweeper=optuna` (Hydra's documented way) with no optimize_metric: 2D runs are
    scored at the end, so the study minimizes their Metrics/reverse_kl and finishes; no plugin
    chatter (alembic's "setup plugin" lines) and no traceback."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    out = cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "model=gan", "dataset=ring8",
                  "train.steps=20", "device=cpu", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the sweeper minimizes Metrics/reverse_kl" in out.stdout
    assert "setup plugin" not in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    values = [_status(p)["metrics"]["Metrics/reverse_kl"] for p in sweep.iterdir() if p.is_dir()]
    assert len(values) == 3 and best == pytest.approx(min(values))


def test_an_optimizing_sweep_of_images_without_a_metric_stops_before_any_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    out = cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "model=gan", "dataset=mnist",
                  "train.steps=20", "device=cpu", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "optimize_metric is not set" in errors[0] and "optimize_metric=Metrics/fd eval.every" in errors[0]
    assert not sweep.exists() or not any(p.is_dir() for p in sweep.iterdir())  # no trial ran


@pytest.mark.slow
def test_submitit_local_runs_a_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "submitit"
    out = run_cli("train", "-m", "hydra/launcher=submitit_local", "model=gan", "dataset=ring8", "train.steps=10",
                  "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert _status(run)["status"] == "ok" and (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_where_it_stopped(tmp_path):
    """submitit's preemption signal (SIGUSR2) mid-run: the loop finishes the step and writes a
    checkpoint, then submitit requeues the job, and the requeued job (`resume=auto`) continues that
    run in its own dir to the end. No periodic checkpoint: only the one written at the signal exists."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganlab", "train", "-m", "hydra/launcher=submitit_local", "model=gan", "dataset=ring8",
         "device=cpu", "train.steps=1500", "train.ckpt_every=1000000", "train.log_every=25", "resume=auto",
         # an hour's limit: submitit takes the signal for a preemption, not a timeout (<= 10 min jobs)
         "hydra.launcher.timeout_min=60", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL)

    def first_log_line():
        runs = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()] if sweep.is_dir() else []
        return runs[0] if runs and "step 25/1500" in _read(runs[0] / "train.log") else None

    t0 = time.monotonic()
    while (run := first_log_line()) is None:
        assert proc.poll() is None and time.monotonic() - t0 < 300, proc.communicate()[0]
        time.sleep(0.05)
    first_pid = _status(run)["pid"]
    os.kill(first_pid, signal.SIGUSR2)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out

    log = _read(run / "train.log")
    stopped = re.search(r"SIGUSR2 received at step (\d+)/1500: stopped with a checkpoint", log)
    assert stopped, log
    at = int(stopped.group(1))
    assert 25 <= at < 1500
    assert f"resuming at step {at}:" in log, log
    status = _status(run)
    assert status["status"] == "ok" and status["step"] == 1500 and status["pid"] != first_pid
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 1500
    assert (run / ".hydra" / "config.yaml").is_file() and list(run.glob(".hydra/resume-*/config.yaml"))
    steps = [e.step for e in read_events(run / "tb").Scalars("Loss/D")]
    assert steps == sorted(set(steps)) and at in steps and steps[-1] == 1500  # no step twice


def test_a_sweep_launched_again_with_resume_auto_finishes_only_what_is_unfinished(tmp_path):
    """The same sweep run again into its own dir with resume=auto (a sweep cut short, launched anew):
    a finished job trains no more, keeps its record and returns its values to the sweep."""
    sweep = tmp_path / "sweep"
    first = cli("train", "-m", "model=gan", "dataset=ring8", "device=cpu", "train.steps=20", "train.log_every=10",
                    "resume=auto", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (run,) = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    record = _status(run)
    again = cli("train", "-m", "model=gan", "dataset=ring8", "device=cpu", "train.steps=20", "train.log_every=10",
                    "resume=auto", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is finished (step 20, train.steps=20); nothing to do" in again.stdout
    assert _status(run) == record
    rows = json.loads(cli("report", str(sweep), "--format", "json", cwd=tmp_path).stdout)
    assert rows[0]["status"] == "ok" and rows[0]["Loss/D"] == pytest.approx(record["metrics"]["Loss/D"])


def test_a_failed_job_is_in_the_report_with_its_reason(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli("train", "-m", "model=dcgan,gan", "dataset=ring8", "train.steps=5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1
    rows = json.loads(cli("report", str(sweep), "--format", "json", cwd=tmp_path).stdout)
    by_status = {r["status"]: r for r in rows}
    assert set(by_status) == {"failed", "ok"}
    assert "cannot train on points data" in by_status["failed"]["error"]
    md = cli("report", str(sweep), "--format", "markdown", cwd=tmp_path).stdout
    assert md.startswith("| run | overrides | status |") and "failed" in md


def test_a_diverging_job_is_recorded_as_diverged_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli("train", "-m", "model=wgan_gp", "dataset=ring8", "penalty=none", "train.n_critic=1",
                  "optimizer.lr=1e-4,1e8", "train.steps=20", "train.log_every=5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 1 and "job(s) of the sweep failed" in out.stderr
    rows = json.loads(cli("report", str(sweep), "--format", "json", cwd=tmp_path).stdout)
    by_lr = {("1e8" if "optimizer.lr=100000000.0" in r["run"] else "1e-4"): r for r in rows}
    assert by_lr["1e8"]["status"] == "diverged" and "NaN/Inf at step" in by_lr["1e8"]["error"]
    assert by_lr["1e-4"]["status"] == "ok" and by_lr["1e-4"]["steps"] == "20/20"
