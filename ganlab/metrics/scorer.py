"""Scoring generated samples against real data: the feature spaces (Inception from local weights,
ganlab's classifier, raw pixels or coordinates) and the `Scorer` that `ganlab eval` and the training
loop's evaluation hook share.

Every number is made with how it was made (features and a hash of their weights, sample counts,
resizing, grey-to-RGB) in `Scorer.protocol`, so numbers made under different protocols are never
silently compared.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ganlab.data.sources import build_source
from ganlab.errors import GanlabError
from ganlab.safeload import file_sha256, load_torch, vetted_copy
from ganlab.metrics import FEATURES, METRICS, check_not_labelled, inception_score, mixture_metrics

TORCHVISION_INCEPTION = "inception_v3_google-0cc3c7bd.pth"
# the TF FID Inception (2015-12-05) as torch-fidelity ships it: what published FID/IS/KID numbers are made with
FID_INCEPTION = "weights-inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FID_INCEPTION}"


def _local_weights(weights: str | None, file_name: str) -> tuple[Path | None, list[Path]]:
    """(the first file that exists, every place looked): the user's path, then torch hub's checkpoint cache."""
    candidates = [Path(weights).expanduser()] if weights else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / file_name)
    return next((p for p in candidates if p.is_file()), None), candidates


def inception_features(weights: str | None, device: torch.device):
    """(extract(x in [-1, 1]) -> (N x 2048 pool features, N x 1000 class probabilities), protocol),
    from LOCAL weights only."""
    import torchvision

    path, candidates = _local_weights(weights, TORCHVISION_INCEPTION)
    if path is None:
        raise GanlabError(
            "Inception weights are not available offline (looked for " + ", ".join(str(p) for p in candidates)
            + "). Copy torchvision's inception_v3 weights (" + TORCHVISION_INCEPTION + ") there or pass "
            "inception_weights=PATH; or score with features=classifier (labelled datasets) or features=pixels."
        )
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    fix = "Give the right file with inception_weights=PATH."
    state = load_torch(path, "torchvision inception_v3 weights", fix)  # runs no code from the file
    try:
        net.load_state_dict(state)
    except Exception as exc:
        raise GanlabError(f"{path} is not torchvision inception_v3 weights ({type(exc).__name__}); "
                          "give the right file with inception_weights=PATH.") from None
    head = net.fc
    net.fc = torch.nn.Identity()
    net, head = net.eval().to(device), head.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def extract(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, probs = [], []
        for chunk in x.split(100):
            chunk = chunk.to(device)
            if chunk.shape[1] == 1:
                chunk = chunk.repeat(1, 3, 1, 1)
            chunk = torch.nn.functional.interpolate((chunk + 1) / 2, size=(299, 299), mode="bilinear",
                                                   align_corners=False, antialias=True)
            pool = net((chunk - mean) / std)
            feats.append(pool.double().cpu())
            probs.append(head(pool).double().softmax(1).cpu())
        return torch.cat(feats), torch.cat(probs)

    return extract, {"features": "torchvision inception_v3 (IMAGENET1K_V1) pool3, 2048-d; NOT the TF-FID "
                     "Inception: not comparable with published FIDs or ISs", "weights": str(path),
                     "weights_sha256": file_sha256(path), "resize": "bilinear antialiased to 299x299",
                     "grayscale_to_rgb": "channel repeated 3x", "normalisation": "ImageNet mean/std"}


def fid_inception_features(weights: str | None, device: torch.device):
    """(extract(x in [-1, 1]) -> (N x 2048 pool3 features, N x 1008 class probabilities), protocol) of the TF FID
    Inception through torch-fidelity, which reproduces the TF reference numbers (its TF-compatible bilinear
    resize to 299, uint8 input, the 2015-12-05 graph's weights): the feature space of published FIDs, ISs, KIDs.
    Weights from a local file only: `inception_weights=PATH`, else torch-fidelity's own cache (torch hub)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise GanlabError("features=inception_fid needs torch-fidelity (pip install torch-fidelity); or score with "
                          "features=classifier or pixels.") from None
    path, candidates = _local_weights(weights, FID_INCEPTION)
    if path is None:
        raise GanlabError(
            "the FID Inception weights are not available offline (looked for " + ", ".join(str(p) for p in candidates)
            + f"). Download {FID_INCEPTION_URL} on a connected machine and copy it to "
            f"{candidates[-1]} (torch-fidelity's cache), or pass inception_weights=PATH (eval.inception_weights=PATH "
            "in training); or score with features=classifier (labelled datasets) or features=pixels.")
    # torch-fidelity unpickles its weights file naively: it gets a copy ganlab wrote from a weights-only read
    fix = f"Give {FID_INCEPTION} with inception_weights=PATH."
    vetted = vetted_copy(path, "the FID Inception's weights", fix)
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                          feature_extractor_weights_path=str(Path(vetted.name) / path.name)).to(device)
    except Exception as exc:
        raise GanlabError(f"{path} is not the FID Inception's weights in torch-fidelity's format ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); give {FID_INCEPTION} with "
                          "inception_weights=PATH.") from None
    finally:
        vetted.cleanup()

    @torch.no_grad()
    def extract(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, probs = [], []
        for chunk in x.split(100):
            chunk = to_uint8_rgb(chunk).to(device)
            pool, logits = net(chunk)
            feats.append(pool.double().cpu())
            probs.append(logits.double().softmax(1).cpu())  # IS from the unbiased logits, as torch-fidelity's
        return torch.cat(feats), torch.cat(probs)

    import torch_fidelity

    return extract, {"features": "TF FID Inception (2015-12-05) pool3, 2048-d, through torch-fidelity "
                     f"{torch_fidelity.__version__} (inception-v3-compat): comparable with published FIDs, ISs, KIDs",
                     "weights": str(path), "weights_sha256": file_sha256(path),
                     "resize": "TensorFlow-1.x-compatible bilinear to 299x299 from uint8",
                     "grayscale_to_rgb": "channel repeated 3x", "normalisation": "(x - 128) / 128 in the graph"}


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as what image files hold: uint8, 3 channels (grey repeated), as FID tools read them."""
    x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def resolve_features(features: str, source, inception_weights) -> str:
    """auto: 2D coordinates for points; for images Inception when its weights are given (the FID Inception for
    torch-fidelity's file, else torchvision's), else ganlab's classifier for labelled in-memory datasets, else
    raw pixels."""
    if features != "auto":
        return features
    if source.kind == "points":
        return "coordinates"
    if inception_weights:
        return "inception_fid" if Path(str(inception_weights)).name == FID_INCEPTION else "inception"
    return "classifier" if source.in_memory and source.num_classes else "pixels"


class Scorer:
    """Scores generated samples against a fixed real reference set: features extracted once for the
    reals, then `scorer(fake) -> {metric: value}`. Used by `ganlab eval` and during training.

    `metrics`: names from ganlab.metrics.METRICS, or "auto" (every metric the features allow).
    `real_hist`: the real data's label counts (for the class-histogram metric)."""

    def __init__(self, source, real: torch.Tensor, metrics, features: str = "auto",
                 inception_weights: str | None = None, device=torch.device("cpu"), real_hist=None):
        features = resolve_features(features, source, inception_weights)
        if features == "inception":
            self.extract, info = inception_features(inception_weights, device)
        elif features == "inception_fid":
            self.extract, info = fid_inception_features(inception_weights, device)
        elif features == "classifier":
            from ganlab.metrics.classifier import classifier_features

            self.extract, info = classifier_features(source, device)
        elif features in ("pixels", "coordinates"):
            self.extract = lambda x: (x.detach().flatten(1).double().cpu(), None)
            info = {"features": f"raw {features} in [-1, 1]" if features == "pixels" else "raw 2D coordinates",
                    "weights_sha256": None, "resize": "none", "grayscale_to_rgb": "none"}
        else:
            raise GanlabError(f"features={features} is not valid: use {', '.join(FEATURES)}.")
        has_probs = features in ("inception", "inception_fid", "classifier")
        if metrics in ("auto", None):
            metrics = [m for m, spec in METRICS.items() if spec.needs == "features" or (has_probs and spec.needs == "probs")]
        metrics = list(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise GanlabError(f"metrics: {', '.join(unknown)} unknown; choose from {', '.join(METRICS)} (or auto).")
        check_not_labelled(metrics)
        needs_probs = [m for m in metrics if METRICS[m].needs == "probs"]
        if needs_probs and not has_probs:
            raise GanlabError(f"metrics {', '.join(needs_probs)} need class probabilities, which {features} features "
                              "do not give: use features=classifier (labelled datasets) or inception, or drop them.")
        if "classes" in metrics and real_hist is None:
            raise GanlabError(f"the classes metric needs labelled real data; {source.name} has no labels.")
        self.source, self.metrics, self.real_hist = source, metrics, real_hist
        self.real_features, real_probs = self.extract(real)
        self.protocol = {**info, "metrics": metrics, "n_real": len(real)}
        if real_probs is not None and "is" in metrics:  # the score of real data: the ceiling to read IS against
            self.protocol["is_of_real_reference"] = inception_score(real_probs)["is"]

    def __call__(self, fake: torch.Tensor) -> dict:
        f_fake, p_fake = self.extract(fake)
        results: dict = {}
        for name in self.metrics:
            spec = METRICS[name]
            if spec.needs == "probs":
                results.update(spec.fn(p_fake, self.real_hist))
            else:
                results.update(spec.fn(f_fake, self.real_features))
        if self.source.kind == "points":
            results.update(mixture_metrics(fake, self.source.modes, self.source.std))
        return results


def real_samples(dataset_cfg, n: int, seed: int):
    """(source, n real samples in [-1, 1] drawn with `seed`, the split's label counts or None)."""
    source = build_source(dataset_cfg)
    g = torch.Generator().manual_seed(seed)
    if source.kind == "points":
        x, _ = source.sample(n, g, torch.device("cpu"))
        return source, x, None
    hist = None
    if source.in_memory:
        x, y = source.load_all() if hasattr(source, "load_all") else source.load()  # the reference: the whole split
        if source.num_classes:
            hist = torch.bincount(y.long(), minlength=int(source.num_classes))
    else:
        ds = source.dataset()
        x = torch.stack([ds[i][0] for i in range(min(len(ds), n))])
    idx = torch.randperm(len(x), generator=g)[:n]
    return source, x[idx].float() / 127.5 - 1, hist
