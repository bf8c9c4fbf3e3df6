"""Data: IDX files gzipped or not, torchvision's layouts, the offline-first lookup order, clear
errors, the device-resident batcher, and the 2D mixtures' geometry."""

import gzip
import math

import numpy as np
import pytest
import torch

from ganlab.data.batches import DeviceBatches, LoaderBatches, build_batches, to_unit_range
from ganlab.data.idx import read_idx, write_idx
from ganlab.data.sources import CifarSource, IdxSource, ImageFolderSource, MixtureSource
from ganlab.errors import GanlabError
from conftest import digit_like, make_cifar, make_idx, make_image_folder


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    if gz:
        assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 3])
    assert np.array_equal(read_idx(path), arr)


def test_idx_truncated_and_foreign_files_get_clear_errors(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(GanlabError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 this is a zip, not IDX")
    with pytest.raises(GanlabError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("layout", ["torchvision", "loose"])
def test_idx_source_finds_torchvision_layout_and_loose_files(tmp_path, layout):
    make_idx(tmp_path, "MNIST", n=50, raw=layout == "torchvision")
    x, y = IdxSource("mnist", "MNIST", tmp_path, download=False).load()
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (50,) and int(y.max()) <= 9


def test_idx_source_falls_back_to_system_dirs(tmp_path):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    make_idx(system, gz=True, raw=False, n=30)
    src = IdxSource("fashion_mnist", "FashionMNIST", tmp_path / "empty", system_dirs=[system], download=False)
    assert src.load()[0].shape == (30, 1, 28, 28)


def test_missing_data_lists_what_was_tried_and_the_fix(tmp_path):
    src = IdxSource("fashion_mnist", "FashionMNIST", tmp_path, system_dirs=[tmp_path / "sys"], download=False)
    with pytest.raises(GanlabError) as err:
        src.load()
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(tmp_path / "sys") in msg
    assert "dataset.root=DIR" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_resolution_resizes_in_memory_sets(tmp_path):
    make_idx(tmp_path, n=10)
    x, _ = IdxSource("mnist", "MNIST", tmp_path, download=False, resolution=32).load()
    assert x.shape == (10, 1, 32, 32)


def test_cifar_source_reads_torchvision_pickles(tmp_path):
    make_cifar(tmp_path, per_batch=6)
    x, y = CifarSource("cifar10", tmp_path, download=False).load()
    assert x.shape == (30, 3, 32, 32) and y.shape == (30,)
    x_test, _ = CifarSource("cifar10", tmp_path, split="test", download=False).load()
    assert x_test.shape == (6, 3, 32, 32)
    with pytest.raises(GanlabError, match="cifar-10-batches-py"):
        CifarSource("cifar10", tmp_path / "nothing", download=False).load()


def test_image_folder_resizes_and_crops_every_image(tmp_path):
    make_image_folder(tmp_path / "imgs", n=7)
    ds = ImageFolderSource("image_folder", tmp_path / "imgs", resolution=32).dataset()
    assert len(ds) == 7
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(7))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanlabError, match="no images"):
        ImageFolderSource("image_folder", tmp_path / "empty").dataset()
    with pytest.raises(GanlabError, match="not a directory"):
        ImageFolderSource("image_folder", tmp_path / "missing").dataset()


def test_unit_range():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    assert torch.allclose(to_unit_range(x), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_device_batches_visit_every_sample_once_per_epoch_in_a_seeded_order():
    n, b = 100, 10
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    y = torch.arange(n)

    def epoch_orders(seed, epochs=3):
        batches = DeviceBatches(x, y, b, seed, torch.device("cpu"))
        out = []
        for _ in range(epochs):
            labels = torch.cat([batches.next()[1] for _ in range(n // b)])
            out.append(labels.tolist())
        return out

    first = epoch_orders(0)
    for order in first:
        assert sorted(order) == list(range(n))  # every sample exactly once
    assert first[0] != first[1]  # reshuffled every epoch
    assert epoch_orders(0) == first  # same seed, same order
    assert epoch_orders(1) != first


def test_device_batches_resume_mid_epoch():
    x = torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1)
    a = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    for _ in range(9):
        a.next()
    state = a.state_dict()
    expected = [a.next()[1].tolist() for _ in range(5)]
    b = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    b.load_state_dict(state)
    assert [b.next()[1].tolist() for _ in range(5)] == expected


def test_device_batches_of_any_size_cut_each_epoch_in_order_and_resume_in_the_middle():
    """PG-GAN asks for batches whose size changes with the resolution: within an epoch they follow the
    same order as full batches; too few left starts the next epoch; a resume continues exactly."""
    x = torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1)
    ref = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    order = torch.cat([ref.next()[1] for _ in range(7)]).tolist()  # epoch 0: 28 of 30 in 4s
    a = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    assert torch.cat([a.next(8)[1], a.next(4)[1], a.next(12)[1]]).tolist() == order[:24]
    state = a.state_dict()
    rest = [a.next(6)[1].tolist()]  # the last 6 of epoch 0 (2 more than batches of 4 could take)
    assert rest[0][:4] == order[24:28] and a.epoch == 0 and sorted(order + rest[0][4:]) == list(range(30))
    rest += [a.next(16)[1].tolist(), a.next(3)[1].tolist()]  # none left: epoch 1
    assert a.epoch == 1 and len(set(rest[1] + rest[2])) == 19
    b = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    b.load_state_dict(state)
    assert [b.next(n)[1].tolist() for n in (6, 16, 3)] == rest
    with pytest.raises(GanlabError, match="larger than the dataset"):
        b.next(31)


def test_device_batches_resume_from_checkpoints_that_counted_whole_batches():
    x = torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1)
    a = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    for _ in range(9):  # epoch 1, batch 2
        a.next()
    state = a.state_dict()
    legacy = {"epoch": state["epoch"], "pos": state["offset"] // 4, "generator": state["generator"]}
    b = DeviceBatches(x, torch.arange(30), 4, 3, torch.device("cpu"))
    b.load_state_dict(legacy)
    assert [b.next()[1].tolist() for _ in range(8)] == [a.next()[1].tolist() for _ in range(8)]


class _Numbered(torch.utils.data.Dataset):
    """Image i is a 1x1 pixel of value i (as image_folder's dataset hands out: uint8, label 0)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([[[i]]], dtype=torch.uint8), 0


def _ids(x: torch.Tensor) -> list:
    return ((x.view(-1) + 1) * 127.5).round().long().tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_are_seeded_epochs_that_resume_mid_epoch(workers):
    """image_folder's DataLoader path: every image once per epoch (last partial batch dropped), a
    seeded order that changes each epoch, and a resume at any batch that reads on identically."""
    n, b = 30, 4

    def take(batches, k):
        return [_ids(batches.next()[0]) for _ in range(k)]

    a = LoaderBatches(_Numbered(n), b, 5, torch.device("cpu"), workers)
    epochs = [sum(take(a, n // b), []) for _ in range(2)]
    for order in epochs:
        assert len(order) == len(set(order)) == (n // b) * b
    assert epochs[0] != epochs[1]
    same = LoaderBatches(_Numbered(n), b, 5, torch.device("cpu"), workers)
    assert sum(take(same, n // b), []) == epochs[0]

    take(a, 3)  # stop mid-epoch (the third), resume in a fresh loader
    state = a.state_dict()
    expected = take(a, 10)  # across the epoch boundary
    b2 = LoaderBatches(_Numbered(n), b, 5, torch.device("cpu"), workers)
    b2.load_state_dict(state)
    assert take(b2, 10) == expected


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(GanlabError, match="train.batch_size=20"):
        DeviceBatches(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), None, 20, 0, torch.device("cpu"))


def test_ring8_geometry():
    src = MixtureSource("ring8", "ring", 8, 2.0, 0.02)
    assert src.modes.shape == (8, 2)
    assert torch.allclose(src.modes.norm(dim=1), torch.full((8,), 2.0), atol=1e-6)
    angles = torch.atan2(src.modes[:, 1], src.modes[:, 0]) % (2 * math.pi)
    assert torch.allclose(angles.sort().values, torch.arange(8) * math.pi / 4, atol=1e-5)
    pts, idx = src.sample(4000, torch.Generator().manual_seed(0), torch.device("cpu"))
    dist = (pts - src.modes[idx]).norm(dim=1)
    assert dist.mean() == pytest.approx(0.02 * math.sqrt(math.pi / 2), rel=0.1)  # Rayleigh mean
    assert torch.bincount(idx, minlength=8).min() > 400


def test_grid25_geometry():
    src = MixtureSource("grid25", "grid", 25, 4.0, 0.05)
    coords = sorted({round(v, 6) for v in src.modes.flatten().tolist()})
    assert coords == [-4.0, -2.0, 0.0, 2.0, 4.0] and len(src.modes) == 25
    pts, idx = src.sample(2000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (pts - src.modes[idx]).std().item() == pytest.approx(0.05, rel=0.1)


def test_build_batches_gives_unit_range_images(tmp_path):
    make_idx(tmp_path, n=40)
    batches = build_batches(IdxSource("mnist", "MNIST", tmp_path, download=False), 8, 0, torch.device("cpu"))
    x, y = batches.next()
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9


def test_digit_like_is_class_dependent():
    imgs, labels = digit_like(40)
    a, b = imgs[labels == labels[0]], imgs[labels != labels[0]]
    assert np.abs(a[0].astype(int) - a[-1]).mean() < np.abs(a[0].astype(int) - b[0]).mean()
