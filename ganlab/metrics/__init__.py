"""Metrics: a registry, one name -> one function of (fake, real) features (mixture: of 2D samples)."""

from ganlab.metrics.distances import fd, frechet_distance, gaussian_stats, kid, prdc
from ganlab.metrics.mixture import mixture_metrics

METRICS = {"fd": fd, "kid": kid, "prdc": prdc}

__all__ = ["METRICS", "fd", "frechet_distance", "gaussian_stats", "kid", "mixture_metrics", "prdc"]
