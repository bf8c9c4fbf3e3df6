"""Dataset sources. Each is named by `_target_` in conf/dataset/*.yaml and built by Hydra.

In-memory image sets (MNIST, Fashion-MNIST, CIFAR-10) return one uint8 tensor N x C x H x W
(`load()`); the training loop keeps it on the device. `image_folder` is disk-backed and gives a
torch Dataset (`dataset()`) for a DataLoader. 2D mixtures sample on the device (`sample()`).
Pixels reach the models in [-1, 1] (see ganlab.data.batches.to_unit_range).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganlab.data.idx import read_idx
from ganlab.errors import GanlabError
from ganlab.safeload import load_pickle, numpy_arrays

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def build_source(dataset_cfg):
    """The source a `dataset` config names (Hydra instantiate), with the user's error on top:
    Hydra wraps errors raised inside targets, and a missing `root` gets one clear sentence."""
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(dataset_cfg)
    except MissingMandatoryValue:
        from omegaconf import OmegaConf

        missing = [k for k in dataset_cfg if OmegaConf.is_missing(dataset_cfg, k)] or ["root"]
        raise GanlabError(f"dataset={dataset_cfg.name} needs " + " and ".join(f"dataset.{k}=DIR" for k in missing)
                          + " (the folder" + ("s that hold" if len(missing) > 1 else " that holds") + " the data).") from None
    except Exception as exc:
        cause = exc
        while cause is not None and not isinstance(cause, GanlabError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _check_split(split: str, allowed=("train", "test")) -> None:
    if split not in allowed:
        raise GanlabError(f"dataset.split={split!r} is not valid: use {' or '.join(allowed)}.")


def _resize_uint8(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize N x C x H x W uint8 images to resolution x resolution (area/bilinear, antialiased)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    out = []
    for chunk in x.split(4096):
        y = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _check_subset(n, num_classes: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < num_classes:
        raise GanlabError(f"dataset.subset={n!r} is not valid: give a number of images >= {num_classes} (one per class), "
                          "e.g. dataset.subset=1000, or null for the whole split.")


def _balanced_subset(x: torch.Tensor, y: torch.Tensor, n, seed, name: str, num_classes: int):
    """dataset.subset: n images, n // K of each class (the first n % K classes one more), drawn with
    dataset.subset_seed: the scarce-data setting of augmentation studies."""
    _check_subset(n, num_classes)
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for k in range(num_classes):
        want = n // num_classes + (1 if k < n % num_classes else 0)
        idx = (y == k).nonzero().squeeze(1)
        if len(idx) < want:
            raise GanlabError(f"dataset.subset={n}: {name}'s class {k} has {len(idx)} images, fewer than the {want} "
                              "asked; use a smaller subset.")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:want]])
    keep = torch.cat(picked)
    keep = keep[torch.randperm(len(keep), generator=g)]
    return x[keep], y[keep]


def _download(name: str, root: Path, train: bool) -> str | None:
    """Let torchvision download `name` into root; return None on success or the reason it failed."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, _TORCHVISION[name])(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types; the message is what matters
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


class _ImageSource:
    kind = "image"
    in_memory = True

    def __init__(self, name: str, resolution: int, channels: int, num_classes: int | None, subset=None,
                 subset_seed=0):
        self.name = name
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.num_classes = num_classes
        self.subset, self.subset_seed = subset, subset_seed
        if subset is not None:  # checked before any data is read
            _check_subset(subset, int(num_classes or 1))

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images and labels (dataset.subset: a class-balanced subset of them)."""
        x, y = self.load_all()
        if self.subset is None:
            return x, y
        return _balanced_subset(x, y, self.subset, self.subset_seed, self.name, int(self.num_classes))

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split (what the evaluation classifier and the metrics' reference sets use)."""
        return self.load()

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.resolution, self.resolution)

    def data_dir_is_system(self) -> bool:
        """Whether the data are read from a system data dir (dataset.system_dirs): nothing is written there."""
        return False


class IdxSource(_ImageSource):
    """MNIST-style IDX files: <root>/<folder>/raw/ (torchvision's layout), <root>/<folder>/, <root>/,
    then `system_dirs` (e.g. Debian's /usr/share/datasets/fashion-mnist), then a download."""

    def __init__(self, name, folder, root, split="train", system_dirs=(), download=True,
                 resolution=28, channels=1, num_classes=10, subset=None, subset_seed=0):
        super().__init__(name, resolution, channels, num_classes, subset, subset_seed)
        _check_split(split)
        self.folder, self.root, self.split = folder, Path(str(root)).expanduser(), split
        self.system_dirs = [Path(str(p)) for p in system_dirs]
        self.download = bool(download)

    def candidates(self) -> list[Path]:
        r = self.root
        return [r / self.folder / "raw", r / self.folder, r, *self.system_dirs]

    def _find(self) -> tuple[Path, Path] | None:
        images, labels = _IDX_FILES[self.split]
        for d in self.candidates():
            for suffix in ("", ".gz"):
                img, lab = d / (images + suffix), d / (labels + suffix)
                if img.is_file() and lab.is_file():
                    return img, lab
        return None

    def data_dir(self) -> Path:
        """The folder the IDX files are read from (after load(); where a classifier is cached)."""
        found = self._find()
        return found[0].parent if found else self.root / self.folder / "raw"

    def data_dir_is_system(self) -> bool:
        return self.data_dir() in self.system_dirs

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._find()
        failure = None
        if found is None and self.download:
            failure = _download(self.name, self.root, self.split == "train")
            found = self._find()
        if found is None:
            tried = "\n".join(f"  - {d}/{_IDX_FILES[self.split][0]}[.gz]" for d in self.candidates())
            how = f"download into {self.root}: failed ({failure})" if self.download else "download: off"
            extra = " or `apt-get install dataset-fashion-mnist`" if self.name == "fashion_mnist" else ""
            raise GanlabError(
                f"{self.name} data not found. Tried:\n{tried}\n  - {how}\n"
                f"Fix: put the IDX files (gzipped or not) in {self.root / self.folder / 'raw'}, "
                f"or point dataset.root=DIR at a directory holding them{extra}."
            )
        img_path, lab_path = found
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise GanlabError(
                f"{img_path} and {lab_path} do not match (shapes {images.shape} and {labels.shape}); "
                "replace them with a matching pair."
            )
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        return _resize_uint8(x, self.resolution), torch.from_numpy(labels.astype(np.int64))


class CifarSource(_ImageSource):
    """CIFAR-10 in torchvision's layout: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}."""

    FOLDER = "cifar-10-batches-py"

    def __init__(self, name, root, split="train", download=True, resolution=32, channels=3, num_classes=10,
                 subset=None, subset_seed=0):
        super().__init__(name, resolution, channels, num_classes, subset, subset_seed)
        _check_split(split)
        self.root, self.split, self.download = Path(str(root)).expanduser(), split, bool(download)

    def _files(self) -> list[Path]:
        names = [f"data_batch_{i}" for i in range(1, 6)] if self.split == "train" else ["test_batch"]
        return [self.root / self.FOLDER / n for n in names]

    def data_dir(self) -> Path:
        return self.root / self.FOLDER

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        files = self._files()
        failure = None
        if not all(f.is_file() for f in files) and self.download:
            failure = _download(self.name, self.root, self.split == "train")
        missing = [f for f in files if not f.is_file()]
        if missing:
            how = f"download into {self.root}: failed ({failure})" if self.download else "download: off"
            raise GanlabError(
                f"cifar10 data not found: missing {', '.join(str(m) for m in missing)}; {how}. "
                f"Fix: unpack cifar-10-python.tar.gz into {self.root} (giving {self.root / self.FOLDER}), "
                "or point dataset.root=DIR at the directory that holds cifar-10-batches-py."
            )
        xs, ys = [], []
        for f in files:
            fix = f"Replace it with the file of cifar-10-python.tar.gz (unpacked into {self.root})."
            batch = load_pickle(f, numpy_arrays(), "a CIFAR-10 batch", fix, encoding="bytes")  # runs no code
            try:
                data, labels = batch[b"data"], batch[b"labels"]
            except Exception as exc:
                raise GanlabError(f"{f} is not a CIFAR-10 batch ({type(exc).__name__}). {fix}") from None
            xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64))
        x = torch.from_numpy(np.concatenate(xs))
        if self.channels == 1:
            x = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        return _resize_uint8(x, self.resolution), torch.from_numpy(np.concatenate(ys))


class StackedMnistSource(_ImageSource):
    """Stacked MNIST (Metz et al. 2017; VEEGAN; PacGAN): three MNIST digits drawn independently and
    stacked as the R, G and B channels: 1000 modes, label = 100 * red + 10 * green + blue digit.
    `size` images are made from MNIST's `split` with a fixed `seed`, so every run sees the same set."""

    def __init__(self, name, root, split="train", download=True, size=60000, seed=0, resolution=28, channels=3,
                 num_classes=1000, system_dirs=()):
        super().__init__(name, resolution, channels, num_classes)
        if channels != 3 or num_classes != 1000:
            raise GanlabError("stacked_mnist has 3 channels and 1000 modes; leave dataset.channels and "
                              "dataset.num_classes as they are.")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise GanlabError(f"dataset.size={size} is not valid: it must be an integer > 0 (e.g. dataset.size=60000).")
        # the digits: MNIST, looked up exactly as dataset=mnist does
        self.mnist = IdxSource("mnist", "MNIST", root, split, system_dirs, download, resolution, 1, 10)
        self.size, self.seed = int(size), int(seed)

    def data_dir(self) -> Path:
        return self.mnist.data_dir()

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        digits, labels = self.mnist.load()  # N x 1 x H x W uint8, N
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(len(digits), (self.size, 3), generator=g)
        x = digits[idx].squeeze(2)  # size x 3 x H x W
        y = labels[idx[:, 0]] * 100 + labels[idx[:, 1]] * 10 + labels[idx[:, 2]]
        return x, y


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
IMAGE_KINDS = ", ".join(sorted(_IMAGE_SUFFIXES))  # for messages


def image_files(root: Path) -> list[Path]:
    """Every image file under `root` (recursively, by suffix), sorted: the order a folder is read in."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], resolution: int, channels: int):
        from torchvision import transforms

        self.files = files
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = transforms.Compose([
            transforms.Resize(resolution, antialias=True),
            transforms.CenterCrop(resolution),
            transforms.PILToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert(self.mode)), 0


class ImageFolderSource(_ImageSource):
    """Any directory of images, searched recursively; resized and centre-cropped to `resolution`."""

    in_memory = False

    def __init__(self, name, root, resolution=64, channels=3, num_classes=None):
        super().__init__(name, resolution, channels, num_classes)
        if channels not in (1, 3):
            raise GanlabError(f"dataset.channels={channels} is not valid for image_folder: use 1 or 3.")
        self.root = Path(str(root)).expanduser()

    def dataset(self) -> torch.utils.data.Dataset:
        if not self.root.is_dir():
            raise GanlabError(f"image_folder: {self.root} is not a directory; set dataset.root=DIR to a folder of images.")
        files = image_files(self.root)
        if not files:
            raise GanlabError(
                f"image_folder: no images ({IMAGE_KINDS}) under {self.root}; "
                "set dataset.root=DIR to a folder that holds some."
            )
        return _FolderDataset(files, self.resolution, self.channels)


class UnpairedSource(_ImageSource):
    """Two folders of images, domains A and B (CycleGAN's unpaired training sets: photos/ and paintings/),
    each searched recursively, resized on the short side and centre-cropped to `load_size`, and held
    in memory as uint8 (on the training device, like the other in-memory sets). Every batch is cut
    from them at random `resolution`-sized crops (the authors' load 286 / crop 256 jitter: `load_size`
    auto is resolution x 286/256; equal to `resolution`: no jitter) and, with `flip`, flipped left-right
    per image, as the paper does. A batch is a pair (images of A, images of B), drawn in independent
    orders: the domains need not be the same size."""

    kind = "unpaired"

    def __init__(self, name, root_a, root_b, resolution=64, channels=3, flip=True, load_size="auto"):
        super().__init__(name, resolution, channels, None)
        if channels not in (1, 3):
            raise GanlabError(f"dataset.channels={channels} is not valid for unpaired: use 1 or 3.")
        self.roots = {"a": Path(str(root_a)).expanduser(), "b": Path(str(root_b)).expanduser()}
        self.flip = bool(flip)
        if load_size in ("auto", None):
            load_size = self.resolution if load_size is None else round(self.resolution * 286 / 256)
        if isinstance(load_size, bool) or not isinstance(load_size, int) or load_size < self.resolution:
            raise GanlabError(f"dataset.load_size={load_size!r} is not valid: give auto (resolution x 286/256, the "
                              f"authors' jitter) or an integer >= dataset.resolution={self.resolution} (equal: no "
                              "random crops).")
        self.load_size = load_size
        self._data: dict[str, torch.Tensor] | None = None

    def files(self, domain: str) -> list[Path]:
        root = self.roots[domain]
        if not root.is_dir():
            raise GanlabError(f"unpaired: {root} is not a directory; set dataset.root_{domain}=DIR to the folder of "
                              f"domain {domain.upper()}'s images.")
        files = image_files(root)
        if not files:
            raise GanlabError(f"unpaired: no images ({IMAGE_KINDS}) under {root}; set "
                              f"dataset.root_{domain}=DIR to a folder that holds domain {domain.upper()}'s images.")
        return files

    def load(self) -> dict[str, torch.Tensor]:
        """{"a": uint8 N_a x C x L x L, "b": uint8 N_b x C x L x L} (L = load_size), read once and kept."""
        if self._data is None:
            self._data = {}
            for domain in ("a", "b"):
                ds = _FolderDataset(self.files(domain), self.load_size, self.channels)
                self._data[domain] = torch.stack([ds[i][0] for i in range(len(ds))])
        return self._data

    def fixed(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images of A and of B, centre crops, uint8 (the fixed set TensorBoard's rows show)."""
        data = self.load()
        return center_crop(data["a"][:n], self.resolution), center_crop(data["b"][:n], self.resolution)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def mixture_log_prob(x: torch.Tensor, modes: torch.Tensor, std: float) -> torch.Tensor:
    """log density of an equal-weight mixture of isotropic Gaussians N(mode, std^2 I) at x (N x d),
    computed in float64 (log-sum-exp: exact far in the tails, where D* = p_r / (p_r + p_g) lives)."""
    x, modes = x.double(), modes.to(x.device).double()
    d = x.shape[1]
    sq = ((x[:, None, :] - modes[None]) ** 2).sum(-1)  # N x K
    log_norm = -0.5 * d * math.log(2 * math.pi * std * std) - math.log(len(modes))
    return torch.logsumexp(-0.5 * sq / (std * std), dim=1) + log_norm


class MixtureSource:
    """A mixture of isotropic Gaussians: `ring` (n 2D modes on a circle), `grid` (n = k*k 2D modes on
    a k x k grid spanning [-radius, radius]^2) or `line` (n 1D modes evenly spaced on [-radius,
    radius]; one mode sits at 0). Each point's label is the index of its mode; `log_prob` is the
    exact density (the theory experiments, model=optimal_d, compare D with it)."""

    kind = "points"
    in_memory = False

    def __init__(self, name, layout, n_modes, radius, std):
        self.name, self.std = name, float(std)
        if layout == "ring":
            angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
            modes = torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], 1)
        elif layout == "grid":
            k = math.isqrt(n_modes)
            if k * k != n_modes or k < 2:
                raise GanlabError(f"dataset.n_modes={n_modes} is not valid for a grid: use a square such as 25.")
            axis = torch.linspace(-radius, radius, k, dtype=torch.float64)
            modes = torch.cartesian_prod(axis, axis)
        elif layout == "line":
            if not isinstance(n_modes, int) or isinstance(n_modes, bool) or n_modes < 1:
                raise GanlabError(f"dataset.n_modes={n_modes!r} is not valid for a line: use an integer >= 1.")
            modes = (torch.linspace(-radius, radius, n_modes, dtype=torch.float64) if n_modes > 1
                     else torch.zeros(1, dtype=torch.float64))[:, None]
        else:
            raise GanlabError(f"dataset.layout={layout!r} is not valid: use ring, grid or line.")
        if self.std <= 0:
            raise GanlabError(f"dataset.std={std} is not valid: it must be > 0.")
        self.modes = modes.float()
        self.shape = (self.modes.shape[1],)
        self.num_classes = len(self.modes)  # the mode a point came from is its label

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """n points and the index of the mode each came from, drawn on `device`."""
        modes = self.modes.to(device)
        idx = torch.randint(len(modes), (n,), generator=generator, device=device)
        noise = torch.randn(n, modes.shape[1], generator=generator, device=device)
        return modes[idx] + self.std * noise, idx

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log density at x (N x d), float64."""
        return mixture_log_prob(x, self.modes, self.std)


class GeneratedImages(_ImageSource):
    """`n` labelled images of class-dependent strokes (ganlab.data.synthetic.digit_like), made in memory
    from `seed`: nothing to read or download (dataset=generated, debug=smoke)."""

    def __init__(self, name, n, resolution, channels, num_classes, seed):
        super().__init__(name, resolution, channels, num_classes)
        if channels not in (1, 3) or num_classes != 10:
            raise GanlabError("dataset=generated makes 1- or 3-channel images of 10 classes; use dataset.channels=1 "
                              "or 3 and leave dataset.num_classes=10.")
        self.n, self.seed = n, int(seed)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        from ganlab.data.synthetic import digit_like

        imgs, labels = digit_like(self.n, size=self.resolution, channels=self.channels, seed=self.seed)
        x = torch.from_numpy(imgs).unsqueeze(1) if self.channels == 1 else torch.from_numpy(imgs).permute(0, 3, 1, 2)
        return x.contiguous(), torch.from_numpy(labels.astype(np.int64))

    def data_dir(self) -> Path:
        """Where the metrics' classifier for these images is cached (they are the same for the same settings)."""
        return Path.home() / ".cache" / "ganlab" / f"generated-{self.n}-{self.resolution}-{self.channels}-{self.seed}"


class GeneratedUnpaired(UnpairedSource):
    """Two generated domains for model=cyclegan: strokes (A) and, drawn independently, inverted strokes (B)."""

    def __init__(self, name, n, resolution, channels, seed):
        super().__init__(name, "<generated A>", "<generated B>", resolution, channels, flip=True, load_size=None)
        self.n, self.seed = n, int(seed)

    def load(self) -> dict[str, torch.Tensor]:
        if self._data is None:
            a, b = GeneratedImages(self.name, self.n, self.resolution, self.channels, 10, self.seed), \
                GeneratedImages(self.name, self.n, self.resolution, self.channels, 10, self.seed + 1)
            self._data = {"a": a.load()[0], "b": 255 - b.load()[0]}
        return self._data


def generated(name, objective, n=256, resolution=32, channels=1, num_classes=10, seed=0):
    """dataset=generated: what the family (model.objective) trains on, made in memory: one labelled image set,
    two unpaired domains (cyclegan's data kind), or a 1D mixture of known density (optimal_d's)."""
    from ganlab.objectives import objective_class

    if isinstance(n, bool) or not isinstance(n, int) or n < 16:
        raise GanlabError(f"dataset.n={n!r} is not valid for dataset=generated: use an integer >= 16 (e.g. 256).")
    try:  # a checkpoint's config is data: an objective outside ganlab is imported only when trusted
        kinds = objective_class(str(objective), from_file=True).data_kinds
    except GanlabError:
        kinds = ("image",)  # a user's own objective not imported yet: the image set (its training imports it)
    if "image" in kinds:
        return GeneratedImages(name, n, resolution, channels, num_classes, seed)
    if "unpaired" in kinds:
        return GeneratedUnpaired(name, n, resolution, channels, seed)
    return MixtureSource(name, "line", 2, 1.0, 0.3)  # as dataset=mix1d


def validate_dataset(d) -> None:
    """dataset.* read before any data: a positive resolution (each source checks the rest as it opens)."""
    from ganlab.checks import positive

    if "resolution" in d and d.resolution is not None:
        positive(d.resolution, "dataset.resolution")
