"""`ganlab augment`: a labelled synthetic dataset from a conditional model, as an .npz that `ganlab
eval ... metrics=[cas]` scores and augmentation scripts mix with real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.models import generate
from ganlab.objectives import load_generator
from ganlab.sample import to_uint8_nhwc
from ganlab.writeguard import file_out


def augment_run(cfg) -> Path:
    n = cfg.n_per_class
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise GanlabError(f"n_per_class={n!r} is not valid: it must be an integer > 0 (e.g. n_per_class=1000).")
    if Path(str(cfg.out)).suffix != ".npz":
        raise GanlabError(f"out={cfg.out}: give a file name ending in .npz.")
    out = file_out(cfg, "labelled samples")
    state = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))
    name = state["config"]["model"]["name"]
    g = load_generator(state, ema=bool(cfg.ema), device=resolve_device(cfg.device))
    if not getattr(g, "conditional", False):
        raise GanlabError(f"ganlab augment needs a conditional model (model=cgan, or model.conditional=true); this run is "
                          f"model={name}, unconditional: use ganlab sample for unlabelled samples.")
    k = int(g.num_classes)
    order = torch.randperm(n * k, generator=torch.Generator().manual_seed(int(cfg.seed)))
    labels = torch.arange(k).repeat_interleave(n)[order]
    torch.manual_seed(int(cfg.seed))  # noise inputs, if the family has them
    x, y = generate(g, labels=labels, generator=torch.Generator().manual_seed(int(cfg.seed) + 1),
                    batch_size=int(cfg.batch_size))
    if x.dim() != 4:
        raise GanlabError(f"ganlab augment exports images; model={name} was trained on points.")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, arr_0=to_uint8_nhwc(x), labels=y.cpu().numpy().astype(np.int64))
    print(f"{len(x)} labelled samples ({n} of each of {k} classes, {'x'.join(map(str, x.shape[2:]))} px) from {name} "
          f"step {state['step']} -> {out}")
    return out
