"""ganlab: a config-driven GAN experiment lab (Hydra + PyTorch + TensorBoard)."""

__version__ = "0.1.0"
