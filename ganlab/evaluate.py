"""`ganlab eval`: metrics of generated samples (a run's generator, an .npz or a folder of images) against real data.

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
from ganlab.objectives import DEFAULT, objective_class, with_sampling, with_truncation


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(samples in [-1, 1] (images N x C x H x W) or float points, labels or None) of an .npz."""
    try:
        data = np.load(path, allow_pickle=False)  # numbers only: a pickled object in the file is refused
        arr = data["arr_0"]
        labels = torch.from_numpy(data["labels"].astype(np.int64)) if "labels" in data.files else None
    except Exception as exc:
        raise GanlabError(f"{path} is not an .npz of samples with arr_0 ({type(exc).__name__}); "
                          "make one with ganlab sample.") from None
    if arr.dtype == np.uint8 and arr.ndim == 4:
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    elif arr.ndim == 2:
        x = torch.from_numpy(arr.astype(np.float32))
    else:
        raise GanlabError(f"{path}: arr_0 has shape {arr.shape} and dtype {arr.dtype}; expected uint8 N x H x W x C "
                          "images or float N x 2 points.")
    if labels is not None and len(labels) != len(x):
        raise GanlabError(f"{path}: {len(labels)} labels for {len(x)} samples; make the file with ganlab augment.")
    return x, labels


def folder_images(target: Path) -> list[Path]:
    """The images of a folder target (translations, inpaintings, another tool's samples); [] for a run dir or a file."""
    from ganlab.data.sources import image_files

    return image_files(target) if target.is_dir() and not (target / "checkpoints").exists() else []


def _load_folder(files: list[Path], shape: tuple[int, ...]) -> torch.Tensor:
    """The images in [-1, 1], converted to the reference's channels and, where their size differs, resized
    (bilinear, antialiased) to the reference's: N x C x H x W."""
    from ganlab.imageio import read_image, resize

    mode = "L" if shape[0] == 1 else "RGB"
    return torch.cat([resize(read_image(p, mode), tuple(shape[-2:])) for p in files])


def _labelled_samples(cfg, target: Path, state: dict | None, npz) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 images, labels, what they are) for the labelled metrics (cas): the .npz's (arr_0 + labels, as
    ganlab augment writes), or n // num_classes per class from a conditional run's G."""
    from ganlab.metrics.cas import to_uint8
    from ganlab.models import generate
    from ganlab.objectives import load_generator

    if state is None:
        x, labels = npz
        if labels is None:
            raise GanlabError(f"{target} has no labels; cas needs labelled samples: make them with `ganlab augment "
                              "run=RUN_DIR n_per_class=N out=FILE.npz` (a conditional model).")
        if x.dim() != 4:
            raise GanlabError("cas scores labelled images, not points.")
        return to_uint8(x), labels, f"{target.name}: {len(x)} labelled images"
    g = load_generator(state, ema=bool(cfg.ema), device=resolve_device(cfg.device))
    if not getattr(g, "conditional", False):
        raise GanlabError(f"cas needs a conditional model (model=cgan or model.conditional=true); this run is "
                          f"model={state['config']['model']['name']}, unconditional.")
    per_class = int(cfg.n) // int(g.num_classes)
    if per_class < 1:
        raise GanlabError(f"n={cfg.n} is fewer than one sample per class ({g.num_classes} classes); use n >= {g.num_classes}.")
    labels = torch.arange(int(g.num_classes)).repeat_interleave(per_class)
    torch.manual_seed(int(cfg.seed))
    x, _ = generate(g, labels=labels, generator=torch.Generator().manual_seed(int(cfg.seed) + 11))
    return to_uint8(x.cpu()), labels, f"{state['config']['model']['name']} step {state['step']}: {per_class} per class"


def evaluate(cfg) -> dict:
    from ganlab.metrics import METRICS

    device = resolve_device(cfg.device)
    target = Path(str(cfg.target)).expanduser()
    metrics = cfg.metrics if isinstance(cfg.metrics, str) else list(cfg.metrics)
    labelled = [] if isinstance(metrics, str) else [m for m in metrics if m in METRICS and METRICS[m].needs == "labelled"]
    scored = metrics if isinstance(metrics, str) else [m for m in metrics if m not in labelled]
    state, npz, folder = None, None, folder_images(target)
    if target.suffix == ".npz" or folder:
        if not target.exists():
            raise GanlabError(f"target={target}: no such file.")
        what = "an image folder" if folder else "an .npz"
        if cfg.get("dataset") is None:
            raise GanlabError(f"{what} target needs the reference data: add dataset=NAME (and dataset.root=DIR).")
        if folder and labelled:
            raise GanlabError(f"an image folder has no labels for {labelled}: score a labelled .npz (ganlab augment).")
        npz = None if folder else _load_npz(target)
        dataset_cfg, source_desc = cfg.dataset, ("image folder" if folder else "npz")
        out = Path(cfg.out) if cfg.out else (target.parent / f"{target.name}.metrics.json" if folder
                                             else target.with_suffix(".metrics.json"))
    else:
        state = with_truncation(load_checkpoint(checkpoint_path(str(target), cfg.checkpoint)),
                                cfg.get("jacobian_truncation"))
        state = with_sampling(state, cfg.get("truncation"), cfg.get("truncation_cutoff"), cfg.get("noise"))
        run_cfg = OmegaConf.create(state["config"])
        dataset_cfg = cfg.dataset if cfg.get("dataset") is not None else run_cfg.dataset
        sampler = objective_class(run_cfg.model.get("objective", DEFAULT), from_file=True).describe_checkpoint_sampler(
            run_cfg, state, bool(cfg.ema))
        source_desc = f"{state['config']['model']['name']} step {state['step']} ({sampler})"
        # beside the run's own metrics.json (written by training), never over it
        out = Path(cfg.out) if cfg.out else ((target if target.is_dir() else target.parent)
                                             / "eval" / str(cfg.checkpoint) / "metrics.json")
    results, protocol, title = {}, {"generated_by": source_desc}, f"{target.name}: {source_desc}"
    if scored:
        source, real, real_hist = real_samples(dataset_cfg, int(cfg.n), int(cfg.seed))
        if folder:
            fake, own = _load_folder(folder, tuple(real.shape[1:])), {}
        elif state is None:
            fake, own = npz[0], {}
        else:
            fake, own = objective_class(run_cfg.model.get("objective", DEFAULT), from_file=True).evaluation_of_checkpoint(
                run_cfg, state, int(cfg.n), torch.Generator().manual_seed(int(cfg.seed) + 7), real, bool(cfg.ema), device)
        if fake is None:  # nothing to sample and score (model=optimal_d): the family's own measurements
            results.update(own)
            protocol["what"] = "the family's own measurements (no samples are scored)"
        else:
            _check_comparable(fake, real, source)
            scorer = Scorer(source, real, scored, cfg.features, cfg.inception_weights, device, real_hist)
            results.update({**scorer(fake), **own})
            protocol.update({**scorer.protocol, "n_fake": len(fake),
                             "reference": {"dataset": source.name, "split": dataset_cfg.get("split", "sampled"),
                                           "root": str(dataset_cfg.get("root", "")), "seed": int(cfg.seed)}})
            title = f"{target.name}: {len(fake)} samples vs {len(real)} of {source.name} ({protocol['features']})"
    if labelled:
        from ganlab.metrics.cas import classification_accuracy_score

        x, y, made_by = _labelled_samples(cfg, target, state, npz)
        scores, how = classification_accuracy_score(x, y, dataset_cfg, device, made_by)
        results.update(scores)
        protocol.update(how)
    return _write_and_show(target, out, results, protocol, title)


def _check_comparable(fake: torch.Tensor, real: torch.Tensor, source) -> None:
    if min(len(fake), len(real)) < 10:
        raise GanlabError(f"too few samples to score ({len(fake)} generated, {len(real)} real); use n >= 10 "
                          "(thousands for numbers worth reporting).")
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise GanlabError(f"the samples are {tuple(fake.shape[1:])} but {source.name} gives {tuple(real.shape[1:])}; "
                          "compare against the dataset (and resolution) the model was trained on.")


def _write_and_show(target: Path, out: Path, results: dict, protocol: dict, title: str) -> dict:
    record = {"target": str(target), "metrics": results, "protocol": protocol}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(table)
    print(f"metrics.json: {out}")
    return record
