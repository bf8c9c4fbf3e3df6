"""debug=smoke for every model family: one sweep over all of conf/model/ on generated data (dataset=generated,
nothing to read), each run a handful of steps that uses every part of the loop once or twice."""

import json

import torch

from conftest import cli, MODELS, compose, read_events


def test_debug_smoke_trains_every_family_on_generated_data(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "model=glob(*)", "debug=smoke", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = {d.name.split("model=")[1]: d for d in sweep.iterdir() if d.is_dir()}
    assert sorted(runs) == MODELS
    for model, run in runs.items():
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "ok" and status["step"] == 4, (model, status)
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert state["step"] == 4 and state["config"]["dataset"]["name"] == "generated"
        tags = read_events(run / "tb").Tags()
        assert any(t.startswith("Loss/") for t in tags["scalars"]), (model, tags["scalars"])
        assert any(t.startswith(("Samples/", "Theory/")) for t in tags["images"]), (model, tags["images"])
    # what the generated data are follows the family: images, two domains, or 1D points of known density
    assert compose("model=dcgan", "debug=smoke").dataset.objective == "adversarial"
    r = cli("report", str(sweep), "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count(",ok,4/4,") == len(MODELS), r.stdout
