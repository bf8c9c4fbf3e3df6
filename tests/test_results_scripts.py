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


def test_a_run_folder_is_reused_only_for_the_same_recipe(tmp_path, monkeypatch):
    """results.py reuses a run whose folder exists: the folder's hash covers the recipe file an `experiment=`
    override names, so editing conf/experiment/X.yaml makes new runs instead of reporting the old recipe's;
    an edit to its comments alone keeps them (a comment changes no run)."""
    import results

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    recipe = tmp_path / "conf" / "experiment" / "grid25.yaml"
    recipe.write_text("train:\n  steps: 14000\n")
    monkeypatch.setattr(results, "REPO", tmp_path)
    before = results.slug(["experiment=grid25"])
    assert results.slug(["experiment=grid25"]) == before and before.startswith("experiment=grid25-")
    recipe.write_text("# measured in section 4\ntrain:\n  steps: 14000   # about 15 CPU minutes\n")
    assert results.slug(["experiment=grid25"]) == before
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


def test_the_reference_comparison_reports_each_side_over_seeds_and_the_ratio_of_medians(tmp_path):
    """results_reference.py (section 10): per seed G steps and classes, FD as median [min - max], the ratio of
    the two medians; a run whose scores an earlier invocation kept is reused, not run again."""
    from results_reference import cached, spread, table

    refs = [{"g_steps": 900, "fd": f, "classes": 10} for f in (200.0, 300.0, 250.0)]
    ours = [{"g_steps": 1000 + i, "fd": f, "classes": c} for i, (f, c) in enumerate(((60.0, 10), (90.0, 9), (75.0, 10)))]
    header, rule, row = table([("wgan_gp", refs, ours)])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["wgan_gp", "900 / 900 / 900", "250.00 [200.00 - 300.00]", "10 / 10 / 10", "1,000 / 1,001 / 1,002",
                     "75.00 [60.00 - 90.00]", "10 / 9 / 10", "0.30"]
    assert spread([12.345]) == "12.35"
    made = []
    first, again = cached(tmp_path / "run.json", lambda: made.append(1) or {"fd": 1.5})
    second, again2 = cached(tmp_path / "run.json", lambda: made.append(1) or {"fd": 9.9})
    assert (first, again, second, again2, len(made)) == ({"fd": 1.5}, False, {"fd": 1.5}, True, 1)


def test_the_reference_scripts_read_fashion_mnist_under_mnists_names(tmp_path):
    """--datasets fashion_mnist: the reference scripts read ../../data/mnist/MNIST/raw/, so Fashion-MNIST's IDX
    files (plain or .gz, in FashionMNIST/raw/ or loose) stand there under MNIST's names; none found: one error
    that names the fix."""
    import gzip

    import pytest
    from results_reference import idx_files

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
            fh.write(b"idx")
    found = idx_files("fashion_mnist", tmp_path)
    assert found["train-images-idx3-ubyte"] == tmp_path / "train-images-idx3-ubyte.gz"
    assert found["t10k-labels-idx1-ubyte"] == tmp_path / "train-labels-idx1-ubyte.gz"  # the stand-in test split
    with pytest.raises(SystemExit, match="mnist_subset.py"):
        idx_files("mnist", tmp_path / "nothing")


def test_the_cyclegan_section_reports_each_seed_and_the_median_share():
    """results_cyclegan.py (section 6): per direction the share labelled as the target class on every seed, its
    median [min - max], the untranslated share, and each seed's cycle error and change."""
    from results_cyclegan import table_rows

    def seed(a2b, b2a):
        return {"a2b": (1000, a2b, 0.03, 10.0, 52.0), "b2a": (1000, b2a, 0.032, 15.0, 51.0)}

    rows = table_rows([seed(0.999, 0.849), seed(1.0, 0.908), seed(0.995, 0.88)])
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells[0] == ["sneakers -> ankle boots", "1,000", "99.9% / 100.0% / 99.5%", "99.9% [99.5 - 100.0]", "3.0%",
                        "10.0 / 10.0 / 10.0", "52.0 / 52.0 / 52.0"]
    assert cells[1][:5] == ["ankle boots -> sneakers", "1,000", "84.9% / 90.8% / 88.0%", "88.0% [84.9 - 90.8]", "3.2%"]
