"""Datasets: where the data comes from (sources) and how batches reach the training device."""

from ganlab.data.batches import build_batches
from ganlab.data.sources import CifarSource, IdxSource, ImageFolderSource, MixtureSource

__all__ = ["build_batches", "CifarSource", "IdxSource", "ImageFolderSource", "MixtureSource"]
