"""Where the configs live, and the checks every run makes before doing any work."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ganlab.errors import GanlabError

_PKG = Path(__file__).resolve().parent


def config_dir() -> str:
    """The Hydra primary config dir.

    A wheel (`pip install .`) carries the top-level conf/ as ganlab/conf; an editable install or a
    source checkout has it beside the package. Both are absolute paths, so the CLI works from any
    working directory; users add their own config dirs with `hydra.searchpath`.
    """
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise GanlabError(
        f"ganlab's configs were not found (looked in {_PKG / 'conf'} and {_PKG.parent / 'conf'}); "
        "reinstall the package with `pip install .` from a ganlab checkout."
    )


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any data is read or any model is built: each group's checks live beside what
    they check (see ganlab.checks); the top-level keys are checked here."""
    from ganlab.data.sources import validate_dataset
    from ganlab.health import validate_health
    from ganlab.losses import validate_penalty
    from ganlab.metrics import validate_eval
    from ganlab.models import validate_model
    from ganlab.optim import validate_optimizer
    from ganlab.run.validate import validate_train
    from ganlab.tricks import validate_tricks

    validate_train(cfg.train)
    validate_health(cfg.health)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise GanlabError(f"seed={cfg.seed!r} is not valid: it must be an integer (e.g. seed=0).")
    if cfg.device not in ("auto", "cpu", "cuda", "mps") and not str(cfg.device).startswith("cuda:"):
        raise GanlabError(f"device={cfg.device!r} is not valid: use auto, cpu, cuda, cuda:N or mps.")
    validate_optimizer(cfg.optimizer)
    validate_model(cfg.model, cfg.train.batch_size)
    validate_eval(cfg.eval)
    validate_tricks(cfg.tricks, cfg.model)
    validate_penalty(cfg.penalty)
    validate_dataset(cfg.dataset)
