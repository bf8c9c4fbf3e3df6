"""The scripts that write docs/results.md: the wall time they report covers every invocation that made it."""

import json
import sys
import time

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from results import minutes_in_all  # noqa: E402


def test_minutes_in_all_adds_up_the_invocations_whose_runs_are_reused(tmp_path):
    started = time.monotonic()
    first = minutes_in_all(tmp_path, started - 40 * 60)  # made everything: 40 min
    assert 40 <= first < 40.1 and json.loads((tmp_path / "wall_minutes.json").read_text()) == first
    second = minutes_in_all(tmp_path, started - 25 * 60, reused=True)  # made one more seed, reused the rest
    assert 65 <= second < 65.2
    third = minutes_in_all(tmp_path, time.monotonic(), reused=True)  # reused everything: nearly nothing added
    assert second <= third < second + 0.1
    fresh = minutes_in_all(tmp_path, time.monotonic() - 10 * 60)  # reused nothing: only its own time
    assert 10 <= fresh < 10.1


def test_judge_names_the_classifier_that_scored_a_run(tmp_path):
    """The docs' Stacked MNIST and reference sections say which classifier version labelled the samples (v1 and
    v2 score the same samples differently), read from the protocol the run's metrics.json records."""
    from results import judge, judged

    from ganlab.metrics.classifier import CLASSIFIER_VERSION

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"metrics": {}, "protocol": {
        "features": f"ganlab's mnist classifier (SmallCNN v{CLASSIFIER_VERSION}), 128-d penultimate layer per channel",
        "classifier_held_out_accuracy": 0.98}}))
    assert judge(path) == f"SmallCNN v{CLASSIFIER_VERSION}, held-out accuracy 0.980"
    path.write_text(json.dumps({"metrics": {}, "protocol": {"classifier_version": 7, "features": "SmallCNN v1",
                                                             "classifier_held_out_accuracy": 0.98}}))
    assert judge(path) == "SmallCNN v7, held-out accuracy 0.980"  # the recorded version wins over the text
    path.write_text(json.dumps({"metrics": {}, "protocol": {"features": "raw 2D coordinates"}}))
    assert judge(path) == "SmallCNN v?"  # not a classifier's numbers: no version to name
    assert judged({"version": 2, "held_out_accuracy": 0.9804}) == ", SmallCNN v2, held-out accuracy 0.980"
    assert judged(None) == ""


def test_sampler_names_what_made_the_samples_without_each_runs_steps(tmp_path):
    from results import sampler

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"metrics": {}, "protocol": {"generated_by": "self-ensemble of the raw weights at steps "
                                                                            "8000, 10000, 10412 (tricks.self_ensemble=3, every 2000 steps)"}}))
    assert sampler(path) == "self-ensemble of the raw weights (tricks.self_ensemble=3, every 2000 steps)"
    path.write_text(json.dumps({"metrics": {}, "protocol": {"generated_by": "EMA weights"}}))
    assert sampler(path) == "EMA weights"


def test_a_run_folder_is_reused_only_for_the_same_recipe_text(tmp_path, monkeypatch):
    """results.py reuses a run whose folder exists: the folder's hash covers the recipe file an `experiment=`
    override names, so editing conf/experiment/X.yaml makes new runs instead of reporting the old recipe's."""
    import results

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    recipe = tmp_path / "conf" / "experiment" / "grid25.yaml"
    recipe.write_text("train:\n  steps: 14000\n")
    monkeypatch.setattr(results, "REPO", tmp_path)
    before = results.slug(["experiment=grid25"])
    assert results.slug(["experiment=grid25"]) == before and before.startswith("experiment=grid25-")
    recipe.write_text("train:\n  steps: 12000\n")
    assert results.slug(["experiment=grid25"]) != before
    assert results.slug(["model=gan", "dataset=grid25"]) == results.slug(["model=gan", "dataset=grid25"])


def test_a_run_of_some_sections_prints_the_rows_the_doc_would_hold():
    """`results.py --sections experiments` writes no doc: it prints section 4's rows (as the doc has them, wall
    time included) and one line per run of the other sections, so nothing is copied by hand from metrics.json."""
    import results

    def run(section, name, seed, metrics, wall=150.0):
        r = results.Run(section, name, seed, [name])
        r.metrics, r.wall, r.rc = metrics, wall, 0 if metrics else 1
        return r

    mix = {"step": 12000, "Metrics/modes_captured": 25.0, "Metrics/modes_captured_strict": 25.0,
           "Metrics/high_quality": 0.9872, "Metrics/reverse_kl": 0.0076, "Metrics/mode_spread": 0.7331}
    lines = results.partial_rows({
        "experiments": [run("experiments", "experiment=grid25", s, mix) for s in range(2)],
        "families_img": [run("families_img", "dcgan@mnist", 0, {"step": 50, "Metrics/fd": 63.98}),
                         run("families_img", "dcgan@mnist", 1, {})],
        "gradient": [],
    })
    assert lines[0] == "experiments:"
    assert lines[1] == results.mixture_row("experiment=grid25", [run("experiments", "experiment=grid25", s, mix)
                                                                 for s in range(2)], with_wall=True)
    assert "98.7% / 98.7%" in lines[1] and lines[1].endswith("| 2.5 / 2.5 |")
    assert lines[2:] == ["families_img:", "  dcgan@mnist seed 0: step 50, fd 63.98", "  dcgan@mnist seed 1: failed (rc 1)"]
