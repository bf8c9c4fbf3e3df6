"""`ganlab eval`: metrics of generated samples (a run's generator or an .npz) against real data.

Every number is written with how it was made (features and a hash of their weights, sample
counts, the reference data, resizing, grey-to-RGB), so numbers made under different protocols are
never silently compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.metrics.scorer import Scorer, real_samples
from ganlab.objectives import DEFAULT, objective_class


def _fake_from_npz(path: Path) -> torch.Tensor:
    try:
        arr = np.load(path)["arr_0"]
    except Exception as exc:
        raise GanlabError(f"{path} is not an .npz of samples with arr_0 ({type(exc).__name__}); "
                          "make one with ganlab sample.") from None
    if arr.dtype == np.uint8 and arr.ndim == 4:
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    if arr.ndim == 2:
        return torch.from_numpy(arr.astype(np.float32))
    raise GanlabError(f"{path}: arr_0 has shape {arr.shape} and dtype {arr.dtype}; expected uint8 N x H x W x C "
                      "images or float N x 2 points.")


def evaluate(cfg) -> dict:
    device = resolve_device(cfg.device)
    target = Path(str(cfg.target)).expanduser()
    if target.suffix == ".npz":
        if not target.is_file():
            raise GanlabError(f"target={target}: no such file.")
        if cfg.get("dataset") is None:
            raise GanlabError("an .npz target needs the reference data: add dataset=NAME (and dataset.root=DIR).")
        fake, own = _fake_from_npz(target), {}
        dataset_cfg, source_desc = cfg.dataset, "npz"
        source, real, real_hist = real_samples(dataset_cfg, int(cfg.n), int(cfg.seed))
        out = Path(cfg.out) if cfg.out else target.with_suffix(".metrics.json")
    else:
        state = load_checkpoint(checkpoint_path(str(target), cfg.checkpoint))
        run_cfg = OmegaConf.create(state["config"])
        dataset_cfg = cfg.dataset if cfg.get("dataset") is not None else run_cfg.dataset
        source, real, real_hist = real_samples(dataset_cfg, int(cfg.n), int(cfg.seed))
        fake, own = objective_class(run_cfg.model.get("objective", DEFAULT)).evaluation_of_checkpoint(
            run_cfg, state, int(cfg.n), torch.Generator().manual_seed(int(cfg.seed) + 7), real, bool(cfg.ema), device)
        kept_ema = any(key.endswith("_ema") and state[key] for key in state)  # generator_ema, generator_0_ema, ...
        source_desc = f"{state['config']['model']['name']} step {state['step']} ({'EMA' if cfg.ema and kept_ema else 'raw'} weights)"
        # beside the run's own metrics.json (written by training), never over it
        out = Path(cfg.out) if cfg.out else ((target if target.is_dir() else target.parent)
                                             / "eval" / str(cfg.checkpoint) / "metrics.json")
    if min(len(fake), len(real)) < 10:
        raise GanlabError(f"too few samples to score ({len(fake)} generated, {len(real)} real); use n >= 10 "
                          "(thousands for numbers worth reporting).")
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise GanlabError(f"the samples are {tuple(fake.shape[1:])} but {source.name} gives {tuple(real.shape[1:])}; "
                          "compare against the dataset (and resolution) the model was trained on.")

    metrics = cfg.metrics if isinstance(cfg.metrics, str) else list(cfg.metrics)
    scorer = Scorer(source, real, metrics, cfg.features, cfg.inception_weights, device, real_hist)
    results = {**scorer(fake), **own}
    protocol = {**scorer.protocol, "n_fake": len(fake), "generated_by": source_desc,
                "reference": {"dataset": source.name, "split": dataset_cfg.get("split", "sampled"),
                              "root": str(dataset_cfg.get("root", "")), "seed": int(cfg.seed)}}
    record = {"target": str(target), "metrics": results, "protocol": protocol}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{target.name}: {len(fake)} samples vs {len(real)} of {source.name} ({protocol['features']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(table)
    print(f"metrics.json: {out}")
    return record
