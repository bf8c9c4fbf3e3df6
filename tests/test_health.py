"""The watchdog (ganlab.health) and train.on_nan=rollback: each finding made to happen on purpose through
the real CLI (a D that is too strong, an lr that explodes, a G forced to one output, a NaN), then read back
from status.json, the event files and `ganlab report`."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ganlab.health import Watchdog
from conftest import cli, read_events

TESTS = str(Path(__file__).resolve().parent)  # faults.py: objectives broken on purpose


def _health(run: Path) -> list[dict]:
    return json.loads((run / "status.json").read_text()).get("health", [])


def _kinds(run: Path) -> list[str]:
    return [f["kind"] for f in _health(run)]


def _ring8(run, steps, *extra):
    return ["train", "dataset=ring8", "device=cpu", f"train.steps={steps}", "train.progress=plain",
            f"hydra.run.dir={run}", *extra]


def test_findings_are_reported_once_when_they_set_in_and_again_only_after_they_clear():
    cfg = OmegaConf.create({"enabled": True, "saturation": 0.01, "saturation_windows": 2, "grad_factor": 100,
                            "diversity_n": 64, "diversity_drop": 0.25, "metric_regress": 0.5})
    w = Watchdog(cfg)
    sat, ok = {"D/D(x)": 0.999, "D/D(G(z))": 0.001}, {"D/D(x)": 0.8, "D/D(G(z))": 0.2}
    seen = [len(w.window(i, v)) for i, v in enumerate([sat, sat, sat, sat, ok, sat, sat])]
    assert seen == [0, 1, 0, 0, 0, 0, 1]  # after 2 windows in a row; once per episode
    grads = [{"Grad/D_norm": x} for x in (1.0, 1.2, 0.9, 1.1, 500.0, 600.0, 1.0, 300.0)]
    assert [len(w.window(i, v)) for i, v in enumerate(grads)] == [0, 0, 0, 0, 1, 0, 0, 1]
    # diversity: relative to the best so far, capped at the real data's 1 (wild spread is not collapse)
    divs = [{"Health/diversity": x} for x in (0.2, 0.9, 0.5, 0.2, 0.1, 40.0, 0.3, 0.2)]
    assert [len(w.window(i, v)) for i, v in enumerate(divs)] == [0, 0, 0, 1, 0, 0, 0, 1]
    # metrics: fd lower is better, modes_captured higher is better (both known to ganlab.health)
    assert [len(w.metrics(i, {"Metrics/fd": v})) for i, v in enumerate((10.0, 8.0, 11.0, 13.0, 7.0))] == [0, 0, 0, 1, 0]
    m = Watchdog(cfg, monitor_metric="Metrics/modes_captured", monitor_mode="max")
    assert [len(m.metrics(i, {"Metrics/modes_captured": v})) for i, v in enumerate((4.0, 8.0, 3.0))] == [0, 0, 1]
    # the memory round-trips (checkpoints)
    again = Watchdog(cfg)
    again.load_state_dict(w.state_dict())
    assert again.state_dict() == w.state_dict() and len(again.findings) == 7


def test_a_d_that_is_too_strong_is_reported_as_saturated(tmp_path):
    run = tmp_path / "strong_d"
    r = cli(*_ring8(run, 160, "model=gan", "optimizer.lr_g=1e-7", "optimizer.lr_d=1e-3", "train.n_critic=3",
                        "train.log_every=20", "train.sample_every=1000"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    findings = _health(run)
    assert [f["kind"] for f in findings] == ["d_saturated"], findings
    step = findings[0]["step"]
    assert 100 <= step <= 160 and findings[0]["value"] < 0.01  # 5 windows of 20 steps at least
    assert f"health: step {step}: d_saturated: D is saturated" in r.stdout
    ev = read_events(run / "tb")
    assert [(e.step, e.value) for e in ev.Scalars("Health/d_saturated")] == [(step, 1.0)]
    dx = {e.step: e.value for e in ev.Scalars("D/D(x)")}
    assert dx[step] > 0.99
    text = ev.Tensors("Health/text_summary")
    assert text[0].step == step and b"d_saturated" in text[0].tensor_proto.string_val[0]
    r = cli("report", str(run), "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0 and f"d_saturated@{step}" in r.stdout, r.stdout + r.stderr


def test_an_lr_that_explodes_is_reported_from_the_norms_before_it(tmp_path):
    """A healthy WGAN for 30 steps, then resumed with lr=10 and no clipping: the gradient norms jump by
    orders of magnitude over their median of the earlier windows (the watchdog's memory is checkpointed)."""
    run = tmp_path / "lr"
    common = ["model=wgan", "train.log_every=5", "train.ckpt_every=10", "train.sample_every=1000"]
    r = cli(*_ring8(run, 30, *common, "optimizer.lr=1e-4"), cwd=tmp_path)
    assert r.returncode == 0 and _kinds(run) == [], r.stderr
    r = cli(*_ring8(run, 40, *common, "optimizer.lr=10", "train.clip_d=null", "resume=true"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    findings = [f for f in _health(run) if f["kind"] == "grad_exploding"]
    assert {f["step"] for f in findings} == {35} and len(findings) == 2, findings  # G and D, once each
    assert all("its median of" in f["message"] and f["value"] > 1e3 for f in findings)
    assert "grad_exploding" in r.stdout
    ev = read_events(run / "tb")
    assert [e.step for e in ev.Scalars("Health/grad_exploding")] == [35, 35]  # one per optimizer


def test_a_g_forced_to_one_output_is_reported_as_collapse_and_a_metric_regression(tmp_path):
    """From step 60 the G ignores z (tests/faults.py): Health/diversity falls to 0, the watchdog says mode
    collapse at the first window after it, and the next evaluation's fd is far worse than its best."""
    run = tmp_path / "collapse"
    r = cli(*_ring8(run, 100, "model=gan", "model.objective=faults.ForcedCollapse", "+model.collapse_at=60",
                        "train.log_every=10", "eval.every=20", "eval.n=500", "train.sample_every=1000"),
                cwd=tmp_path, PYTHONPATH=TESTS)
    assert r.returncode == 0, r.stderr
    findings = {f["kind"]: f for f in _health(run)}
    assert findings["diversity_drop"]["step"] == 60 and findings["diversity_drop"]["value"] < 1e-3, findings
    assert findings["metric_regression"]["step"] == 60 and "Metrics/fd" in findings["metric_regression"]["message"]
    ev = read_events(run / "tb")
    div = {e.step: e.value for e in ev.Scalars("Health/diversity")}
    assert min(div[s] for s in (10, 20, 30, 40, 50)) > 0.05 and max(div[s] for s in (60, 70, 80, 90, 100)) < 1e-3
    assert [e.step for e in ev.Scalars("Health/diversity_drop")] == [60]
    assert [e.step for e in ev.Scalars("Health/metric_regression")] == [60]
    r = cli("report", str(run), cwd=tmp_path)
    assert "diversity_drop@60" in r.stdout and "metric_regression@60" in r.stdout, r.stdout


@pytest.mark.parametrize("start", ["from_the_start", "from_a_checkpoint"])
def test_rollback_reloads_the_last_good_state_lowers_the_lrs_and_goes_on(start, tmp_path):
    """lr=1e8 drives a WGAN's losses to NaN within a few steps; train.on_nan=rollback reloads the last good
    checkpoint (or the start), lowers both lrs (here by 1e-11, to 1e-3) and trains on to the end."""
    run = tmp_path / "run"
    common = ["model=wgan_gp", "penalty=none", "train.n_critic=1", "train.log_every=5", "train.ckpt_every=10",
              "train.sample_every=1000", "train.on_nan=rollback", "train.rollback_lr_factor=1e-11"]
    if start == "from_a_checkpoint":
        r = cli(*_ring8(run, 20, *common, "optimizer.lr=1e-4"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = cli(*_ring8(run, 40, *common, "optimizer.lr=1e8", *(["resume=true"] if start != "from_the_start" else [])),
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "ok" and status["step"] == 40
    rollbacks = [f for f in status["health"] if f["kind"] == "rollback"]
    assert len(rollbacks) == 1, status["health"]
    where = "the start (step 0)" if start == "from_the_start" else "checkpoint step 20"
    assert f"rolled back to {where}" in rollbacks[0]["message"] and "x1e-11" in rollbacks[0]["message"]
    assert "rolled back to" in r.stdout
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 40 and state["health"]["rollbacks"] == 1
    assert state["health"]["lr_scale"] == pytest.approx(1e-11)
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert all(torch.isfinite(v).all() for v in state["generator"].values())
    ev = read_events(run / "tb")
    assert [e.value for e in ev.Scalars("Health/rollbacks")] == [1.0]
    steps = [e.step for e in ev.Scalars("Loss/D")]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # the diverged stretch was purged, not shown twice
    assert all(e.value == e.value for e in ev.Scalars("Loss/D"))  # no NaN left in the curves
