"""`ganlab data check dataset=NAME`: what a dataset holds before anything trains on it.

In-memory sets (mnist, fashion_mnist, cifar10, stacked_mnist): where the files were found, count,
channels and size, pixel value range, mean and std, exact duplicate images, class balance; then the
evaluation classifier the metrics need is trained and cached once (`cache=true`), so the first
training run with `eval.every` or `ganlab eval` does not pay for it. Folders (image_folder, unpaired):
every file opened and decoded, the unreadable ones named (the check then fails, naming them),
sizes and colour modes, exact duplicate files. 2D/1D mixtures: their modes and std (nothing to read).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import torch

from ganlab.data.sources import GeneratedImages, GeneratedUnpaired, build_source, image_files
from ganlab.device import resolve_device
from ganlab.errors import GanlabError


def _duplicates(keys: list) -> tuple[int, list[list[int]]]:
    """(how many items repeat an earlier one, the groups of indices that are identical)."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    repeated = [g for g in groups.values() if len(g) > 1]
    return sum(len(g) - 1 for g in repeated), repeated


def check_tensors(x: torch.Tensor, y: torch.Tensor | None, num_classes: int | None) -> dict:
    """The facts of an in-memory uint8 image set (N x C x H x W) and its labels."""
    flat = x.flatten(1)
    keys = [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in flat]
    n_dup, groups = _duplicates(keys)
    xf = x.float()
    facts = {"images": len(x), "channels": int(x.shape[1]), "size": f"{x.shape[2]}x{x.shape[3]}",
             "dtype": str(x.dtype).replace("torch.", ""), "min": int(x.min()), "max": int(x.max()),
             "mean": round(float(xf.mean()), 2), "std": round(float(xf.std()), 2),
             "duplicates": n_dup, "duplicate_examples": [g[:4] for g in groups[:3]]}
    if y is not None and num_classes:
        counts = torch.bincount(y.long(), minlength=int(num_classes))
        facts.update(classes=int((counts > 0).sum()), per_class_min=int(counts.min()), per_class_max=int(counts.max()),
                     class_counts=counts.tolist() if len(counts) <= 20 else None)
    return facts


def check_files(root: Path) -> dict:
    """Open and decode every image under root: counts, sizes, modes, exact duplicate files, unreadable ones."""
    from PIL import Image

    files = image_files(root)
    if not files:
        raise GanlabError(f"no images under {root}; set dataset.root=DIR to a folder that holds some.")
    sizes, modes, bad, digests = Counter(), Counter(), [], []
    for f in files:
        data = f.read_bytes()
        digests.append(hashlib.sha1(data).hexdigest())
        try:
            with Image.open(f) as im:
                im.load()
                sizes[im.size] += 1
                modes[im.mode] += 1
        except Exception as exc:
            bad.append(f"{f} ({type(exc).__name__})")
    n_dup, groups = _duplicates(digests)
    widths = [w for (w, _), c in sizes.items() for _ in range(c)]
    heights = [h for (_, h), c in sizes.items() for _ in range(c)]
    return {"files": len(files), "readable": len(files) - len(bad), "unreadable": bad,
            "width": f"{min(widths)}..{max(widths)}" if widths else "-", "height": f"{min(heights)}..{max(heights)}" if heights else "-",
            "modes": dict(modes), "duplicates": n_dup,
            "duplicate_examples": [[str(files[i].relative_to(root)) for i in g[:4]] for g in groups[:3]]}


def check_data(cfg) -> dict:
    if cfg.get("dataset") is None:
        raise GanlabError("say which dataset to check: ganlab data check dataset=NAME (e.g. dataset=fashion_mnist "
                          "dataset.root=DIR).")
    source = build_source(cfg.dataset)
    report: dict = {"dataset": source.name, "kind": source.kind}
    if source.kind == "points":
        report.update(modes=len(source.modes), dimensions=int(source.modes.shape[1]), std=source.std,
                      note="generated on the fly: nothing to read")
    elif source.kind == "unpaired" and isinstance(source, GeneratedUnpaired):
        for domain, x in source.load().items():
            report[f"domain_{domain}"] = check_tensors(x, None, None)
    elif source.kind == "unpaired":
        for domain in ("a", "b"):
            report[f"domain_{domain}"] = check_files(source.roots[domain])
    elif source.in_memory:
        x, y = source.load()
        report["found_in"] = ("generated in memory (ganlab.data.synthetic)" if isinstance(source, GeneratedImages)
                              else str(source.data_dir()))
        report.update(check_tensors(x, y, source.num_classes))
    else:
        report["root"] = str(source.root)
        report.update(check_files(source.root))
    if cfg.cache and source.kind == "image" and source.in_memory and source.num_classes:
        from ganlab.metrics.classifier import classifier_for

        base = getattr(source, "mnist", source)  # stacked_mnist is scored with MNIST's classifier
        _, info = classifier_for(base, resolve_device(cfg.device))
        report["evaluation_classifier"] = {"path": info["path"], "held_out_accuracy": round(info["held_out_accuracy"], 4)}
    _show(report)
    bad = [f for part in [report, *(report.get(f"domain_{d}", {}) for d in ("a", "b"))] for f in part.get("unreadable", [])]
    if bad:
        raise GanlabError(f"{len(bad)} unreadable image file(s): {'; '.join(bad[:10])}"
                          + (" ..." if len(bad) > 10 else "") + ". Remove or replace them before training.")
    return report


def _show(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ganlab data check: {report['dataset']}", show_header=False)
    table.add_column("what")
    table.add_column("value")

    def rows(d: dict, pre: str = ""):
        for k, v in d.items():
            if isinstance(v, dict) and k.startswith(("domain_", "evaluation")):
                yield from rows(v, f"{pre}{k}.")
            elif v not in (None, [], {}):
                yield f"{pre}{k}", ", ".join(map(str, v)) if isinstance(v, list) else str(v)

    for k, v in rows(report):
        table.add_row(k, v)
    console = Console()
    console.width = max(console.width, 140)  # paths and class counts stay on one line in logs and pipes
    console.print(table)
