"""Metrics. A registry: one name, one function."""

from ganlab.metrics.mixture import mixture_metrics

METRICS = {"mixture": mixture_metrics}

__all__ = ["METRICS", "mixture_metrics"]
