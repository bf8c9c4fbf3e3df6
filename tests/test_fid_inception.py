"""Paper-comparable FID/IS/KID: the TF FID Inception through torch-fidelity (eval.features=inception_fid). Its
real weights cannot be downloaded here, so the plumbing is tested with torch-fidelity's own architecture and
random weights saved as its weights file: ganlab's features equal the library's for the same images, and
ganlab's FID and IS over them equal torch-fidelity's own calculate_metrics; the offline refusal names the file."""

import json

import numpy as np
import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.metrics.scorer import FID_INCEPTION, Scorer, fid_inception_features, to_uint8_rgb
from conftest import cli, make_idx

pytestmark = pytest.mark.slow  # minutes of real processes: scripts/test --quick skips these

fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 (inception-v3-compat) at its random init, saved in its weights-file layout."""
    path = tmp_path_factory.mktemp("fid") / FID_INCEPTION
    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    state = net.state_dict()
    for k, v in state.items():  # BatchNorm's statistics as a trained net has them, not the init's 0 and 1
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    torch.save(state, path)
    return path


def _images(n, seed, channels=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def test_the_same_features_through_ganlab_and_through_torch_fidelity(random_weights):
    extract, protocol = fid_inception_features(str(random_weights), torch.device("cpu"))
    x = _images(6, 0)
    ours, probs = extract(x)
    lib = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(random_weights))
    with torch.no_grad():
        pool, logits = lib(to_uint8_rgb(x))
    torch.testing.assert_close(ours, pool.double(), rtol=0, atol=0)
    torch.testing.assert_close(probs, logits.double().softmax(1), rtol=0, atol=0)
    assert ours.shape == (6, 2048) and probs.shape == (6, 1008)
    assert "comparable with published FIDs" in protocol["features"] and protocol["weights"] == str(random_weights)
    # what image files hold: [-1, 1] -> uint8, grey repeated to RGB
    u = to_uint8_rgb(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 1, 3) and u[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_ganlabs_fid_and_is_equal_torch_fidelitys_own(random_weights):
    import torch_fidelity

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = to_uint8_rgb(x)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    fake, real = _images(32, 1), _images(32, 2) * 0.5
    source = type("S", (), {"kind": "image", "in_memory": True, "num_classes": None, "name": "test"})()
    scorer = Scorer(source, real, ["fd", "is"], "inception_fid", str(random_weights))
    ours = scorer(fake)
    lib = torch_fidelity.calculate_metrics(input1=Images(fake), input2=Images(real), fid=True, isc=True, cuda=False,
                                           feature_extractor_weights_path=str(random_weights), verbose=False,
                                           isc_splits=10, batch_size=32, save_cpu_ram=True)
    assert ours["fd"] == pytest.approx(lib["frechet_inception_distance"], rel=1e-3)
    assert ours["is"] == pytest.approx(lib["inception_score_mean"], rel=1e-3)


def test_eval_names_the_network_in_metrics_json_and_refuses_without_weights(random_weights, tmp_path):
    make_idx(tmp_path / "data", n=40)
    imgs = (np.random.default_rng(0).random((12, 28, 28, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=imgs)
    common = ["eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={tmp_path / 'data'}",
              "dataset.download=false", "n=12", "metrics=[fd,is]"]
    # auto picks the FID Inception for torch-fidelity's weights file
    r = cli(*common, f"inception_weights={random_weights}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "x.metrics.json").read_text())["protocol"]
    assert p["features"].startswith("TF FID Inception (2015-12-05) pool3, 2048-d, through torch-fidelity")
    assert p["resize"].startswith("TensorFlow-1.x-compatible bilinear") and len(p["weights_sha256"]) == 64
    # offline with nothing in the cache: one message naming the file, where to put it, and the alternatives
    r = cli(*common, "features=inception_fid", cwd=tmp_path, TORCH_HOME=str(tmp_path / "empty_torch_home"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert FID_INCEPTION in r.stderr and "torch-fidelity's cache" in r.stderr and "features=classifier" in r.stderr
    with pytest.raises(GanlabError, match="not the FID Inception's weights"):
        bad = tmp_path / "bad.pth"
        torch.save({"x": torch.zeros(1)}, bad)
        fid_inception_features(str(bad), torch.device("cpu"))
