"""Metrics: a registry, one name -> one function.

`features` metrics take (fake, real) feature matrices; `probs` metrics take the fakes' class
probabilities (and the real label histogram) and need a classifier feature space (ganlab's
classifier or Inception); `labelled` metrics train on labelled samples (a conditional run's, or an
.npz with labels) and are scored by `ganlab eval` only. 2D samples also get the mixture metrics
(ganlab.metrics.mixture).
"""

from dataclasses import dataclass
from typing import Callable

from ganlab.errors import GanlabError
from ganlab.metrics.classes import class_histogram, inception_score
from ganlab.metrics.distances import fd, frechet_distance, gaussian_stats, kid, prdc
from ganlab.metrics.mixture import mixture_metrics


@dataclass(frozen=True)
class Metric:
    fn: Callable
    needs: str  # "features" | "probs" | "labelled"
    about: str


METRICS = {
    "fd": Metric(fd, "features", "Fréchet distance (FID with Inception features)"),
    "kid": Metric(kid, "features", "kernel inception distance (unbiased MMD^2, cubic kernel)"),
    "prdc": Metric(prdc, "features", "precision/recall (k=3), density/coverage (k=5)"),
    "is": Metric(lambda probs, hist: inception_score(probs), "probs", "Inception(-style) score"),
    "classes": Metric(class_histogram, "probs", "classes captured, KL of class histogram to real and uniform"),
    # trains a classifier: ganlab.evaluate calls ganlab.metrics.cas itself (fn unused here)
    "cas": Metric(None, "labelled", "Classification Accuracy Score: trained on the labelled samples, tested on real test data"),
}


def check_not_labelled(metrics) -> None:
    """The `labelled` metrics (cas) train a classifier on a finished conditional model's samples: ganlab eval's."""
    labelled = [m for m in metrics if m in METRICS and METRICS[m].needs == "labelled"]
    if labelled:
        raise GanlabError(f"{', '.join(labelled)} trains a classifier on labelled samples: score it on a finished run with "
                          f"`ganlab eval target=RUN_DIR metrics=[{labelled[0]}]` (conditional models), not during training.")


# feature spaces samples are scored in (ganlab.metrics.scorer): auto, torchvision's Inception (local weights),
# the TF FID Inception through torch-fidelity (local weights: the numbers papers publish), ganlab's classifier,
# raw pixels
FEATURES = ("auto", "inception", "inception_fid", "classifier", "pixels")

__all__ = ["FEATURES", "METRICS", "Metric", "check_not_labelled", "class_histogram", "fd", "frechet_distance",
           "gaussian_stats", "inception_score", "kid", "mixture_metrics", "prdc"]


def validate_eval(ev) -> None:
    """eval.*: the cadence, the sample count, the monitor's direction, the metrics and the feature space."""
    from ganlab.checks import one_of, positive

    if ev.every is not None:
        positive(ev.every, "eval.every")
    positive(ev.n, "eval.n")
    if ev.n < 10:
        raise GanlabError(f"eval.n={ev.n} is too small to score: use at least 10 (thousands for real numbers).")
    one_of(ev.mode, "eval.mode", ("min", "max"), "min or max")
    if isinstance(ev.metrics, str):
        if ev.metrics != "auto":
            raise GanlabError(f"eval.metrics={ev.metrics!r} is not valid: use auto or a list such as "
                              f"[{', '.join(METRICS)}].")
    else:
        unknown = [m for m in ev.metrics if m not in METRICS]
        if unknown:
            raise GanlabError(f"eval.metrics: {', '.join(map(str, unknown))} unknown; choose from "
                              f"{', '.join(METRICS)} (or auto).")
        check_not_labelled(list(ev.metrics))
    one_of(ev.features, "eval.features", tuple(FEATURES))
