"""`ganlab import`: official pretrained networks as run dirs, with nothing in the files ever run.

The test writes its own files in the official layouts (no official code is used or needed): a stylegan2-ada-pytorch
network pickle (persistent objects: `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose meta carries
module source that would create a marker file if executed, as the official loader executes it), and
pytorch-CycleGAN-and-pix2pix generator state dicts. The imported runs sample the same images as the networks
they came from, resume (fine-tune) for a few steps, and sample again."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ganlab.checkpoint import load_checkpoint
from ganlab.models import stylegan as sg
from conftest import cli, compose, run_cli


# ------------------------------------------------------------------- an official-layout network pickle
@contextlib.contextmanager
def official_modules():
    """Stand-ins for the modules an official pickle names (torch_utils.persistence, dnnlib.util), registered
    only while the test writes its pickle, so that pickle records those names."""
    made = {}
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        made[name] = sys.modules.get(name)
        sys.modules[name] = types.ModuleType(name)

    def _reconstruct_persistent_obj(meta):  # noqa: ANN001 (never called: this side only writes)
        raise AssertionError("the writer's stand-in is never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util", "__qualname__": "EasyDict"})
    sys.modules["dnnlib.util"].EasyDict = easy
    try:
        yield _reconstruct_persistent_obj, easy
    finally:
        for name, old in made.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def write_official_pickle(path: Path, nets: dict, init_kwargs: dict, module_src: str, extra_state=None) -> None:
    """`nets` (ganlab StyleGAN2 modules, whose attributes mirror the official ones) pickled as the official
    training loop's snapshot pickles its persistent networks."""
    with official_modules() as (reconstruct, easy):
        class Writer(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, torch.nn.Module) and type(obj).__module__ == "ganlab.models.stylegan":
                    state = dict(obj.__dict__)
                    state["_init_kwargs"] = easy(init_kwargs.get(id(obj), {}))
                    state["_init_args"] = ()
                    if extra_state is not None and id(obj) in extra_state:
                        state.update(extra_state[id(obj)])
                    meta = dict(type="class", version=4, module_src=module_src,
                                class_name={"StyleGenerator": "Generator", "StyleDiscriminator": "Discriminator"}.get(
                                    type(obj).__name__, type(obj).__name__), state=state)
                    return reconstruct, (meta,)
                return NotImplemented

        buf = io.BytesIO()
        Writer(buf, protocol=4).dump({"G": nets["G"], "D": nets["D"], "G_ema": nets["G_ema"], "augment_pipe": None,
                                      "training_set_kwargs": {"resolution": 32}})
        path.write_bytes(buf.getvalue())


def _official_kwargs(res=32, ch=1, maps=2):
    g = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=ch,
             mapping_kwargs={"num_layers": maps}, synthesis_kwargs={"channel_base": 256, "channel_max": 16,
                                                                   "num_fp16_res": 0, "conv_clamp": 256})
    d = dict(c_dim=0, img_resolution=res, img_channels=ch, architecture="resnet", channel_base=256, channel_max=16,
             num_fp16_res=0, conv_clamp=256, epilogue_kwargs={"mbstd_group_size": 4})
    return g, d


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A network pickle in the official layout (G, D, G_ema), and the modules it was written from."""
    root = tmp_path_factory.mktemp("official")
    g_kw, d_kw = _official_kwargs()
    torch.manual_seed(0)
    ours_g = sg.StyleGenerator(**{**g_kw, "mapping_kwargs": {"num_layers": 2},
                                  "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "conv_clamp": 256}})
    ours_d = sg.StyleDiscriminator(**{k: v for k, v in d_kw.items() if k not in ("num_fp16_res", "epilogue_kwargs")},
                                   mbstd_group_size=4)
    with torch.no_grad():
        for p in [*ours_g.parameters(), *ours_d.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)  # not at the init: biases and noise strengths matter
        ours_g.mapping.w_avg.normal_()
    g_ema = sg.StyleGenerator(**{**g_kw, "mapping_kwargs": {"num_layers": 2},
                                 "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "conv_clamp": 256}})
    g_ema.load_state_dict(ours_g.state_dict())
    with torch.no_grad():
        g_ema.mapping.fc0.weight.mul_(1.5)  # G_ema differs from G: the import must take each from its own
    marker = root / "MARKER"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"  # what the official loader would exec
    pkl = root / "network-snapshot-000100.pkl"
    write_official_pickle(pkl, {"G": ours_g, "D": ours_d, "G_ema": g_ema},
                          {id(ours_g): g_kw, id(g_ema): g_kw, id(ours_d): d_kw}, src)
    return {"root": root, "pkl": pkl, "G": ours_g.eval(), "G_ema": g_ema.eval(), "D": ours_d.eval(), "marker": marker}


def test_an_official_pickle_imports_to_the_same_networks_without_running_its_code(official, tmp_path):
    run = tmp_path / "run"
    out = run_cli("import", "stylegan2", str(official["pkl"]), f"out={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fine-tune: ganlab train resume=" in out.stdout
    assert not official["marker"].exists()  # the module source in the pickle never ran
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 0 and state["imported"]["format"].startswith("stylegan2-ada-pytorch")
    m = state["config"]["model"]
    assert (m["channel_base"], m["channel_max"], m["mapping_layers"], m["conv_clamp"], m["z_dim"]) == (256, 16, 2, 256, 16)
    assert state["config"]["dataset"]["resolution"] == 32 and state["config"]["dataset"]["channels"] == 1
    for name, net in (("generator", official["G"]), ("generator_ema", official["G_ema"]), ("discriminator", official["D"])):
        mine = net.state_dict()
        assert state[name].keys() == mine.keys() and all(torch.equal(state[name][k], mine[k]) for k in mine), name
    # ganlab sample z=Z.npy truncation=1 noise=const: the network's own images, rounded as ganlab rounds
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "z.npy", z.numpy())
    r = cli("sample", f"run={run}", f"z={tmp_path / 'z.npy'}", "truncation=1", "noise=const",
            f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = official["G_ema"](z, noise_mode="const")
    want = want.clamp(-1, 1).add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], want)


def test_an_imported_network_fine_tunes_for_20_steps_and_samples_before_and_after(official, tmp_path):
    run = tmp_path / "run"
    assert cli("import", "stylegan2", str(official["pkl"]), f"out={run}", cwd=tmp_path).returncode == 0
    before = tmp_path / "before.npz"
    assert cli("sample", f"run={run}", "n=8", f"out={before}", cwd=tmp_path).returncode == 0
    out = cli("train", f"resume={run}", "train.steps=20", "train.batch_size=8", "train.log_every=10",
              "train.sample_every=20", "train.progress=none", "device=cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # the run's own overrides adopted from .hydra/overrides.yaml
    assert "starting from the networks imported from" in out.stdout + out.stderr
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 20 and "imported" not in state and "opt_g" in state
    moved = [k for k, v in official["G"].state_dict().items() if not torch.equal(v, state["generator"][k])]
    assert moved  # it trained from the imported weights
    after = tmp_path / "after.npz"
    assert cli("sample", f"run={run}", "n=8", f"out={after}", cwd=tmp_path).returncode == 0
    a, b = np.load(before)["arr_0"], np.load(after)["arr_0"]
    assert a.shape == b.shape == (8, 32, 32, 1) and not np.array_equal(a, b)


def test_a_crafted_network_pickle_is_refused_and_runs_nothing(official, tmp_path):
    marker = tmp_path / "MARKER"

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    g_kw, d_kw = _official_kwargs()
    evil = tmp_path / "evil.pkl"
    write_official_pickle(evil, {"G": official["G"], "D": official["D"], "G_ema": official["G_ema"]},
                          {id(official["G"]): g_kw, id(official["G_ema"]): g_kw, id(official["D"]): d_kw}, "",
                          extra_state={id(official["D"]): {"payload": Marker()}})
    out = run_cli("import", "stylegan2", str(evil), f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert f"{evil} was refused" in out.stderr and "posix.system" in out.stderr
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()
    not_a_pickle = tmp_path / "x.pkl"
    not_a_pickle.write_bytes(b"\x80\x04not a pickle")
    out = cli("import", "stylegan2", str(not_a_pickle), f"out={tmp_path / 'run2'}", cwd=tmp_path)
    assert out.returncode == 2 and "is not an official stylegan2-ada-pytorch network pickle" in out.stderr


def test_import_refuses_bad_arguments_and_protects_run_dirs(official, tmp_path):
    for args, message in ((["stylegan3", str(official["pkl"]), "out=x"], "usage: ganlab import"),
                          (["stylegan2", str(tmp_path / "none.pkl"), "out=x"], "no such file"),
                          (["stylegan2", str(official["pkl"])], "out=RUN_DIR"),
                          (["stylegan2", str(official["pkl"]), f"out={official['root']}"], "contains file=")):
        out = cli("import", *args, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
    run = tmp_path / "run"
    assert cli("import", "stylegan2", str(official["pkl"]), f"out={run}", cwd=tmp_path).returncode == 0
    again = cli("import", "stylegan2", str(official["pkl"]), f"out={run}", "overwrite=true", cwd=tmp_path)
    assert again.returncode == 2 and "holds a checkpoint" in again.stderr


def test_a_conditional_official_network_maps_to_a_conditional_run(tmp_path):
    g_kw = dict(z_dim=8, c_dim=10, w_dim=8, img_resolution=32, img_channels=3, mapping_kwargs={"num_layers": 2},
                synthesis_kwargs={"channel_base": 128, "channel_max": 8})
    d_kw = dict(c_dim=10, img_resolution=32, img_channels=3, architecture="orig", channel_base=128, channel_max=8,
                epilogue_kwargs={"mbstd_group_size": 32})  # the official cifar config: D 'orig', mbstd 32
    torch.manual_seed(1)
    g = sg.StyleGenerator(**g_kw)
    d = sg.StyleDiscriminator(**{k: v for k, v in d_kw.items() if k != "epilogue_kwargs"}, mbstd_group_size=32)
    pkl = tmp_path / "cifar10.pkl"
    write_official_pickle(pkl, {"G": g, "D": d, "G_ema": g}, {id(g): g_kw, id(d): d_kw}, "")
    run = tmp_path / "run"
    out = cli("import", "stylegan2", str(pkl), f"out={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert cfg["model"]["conditional"] and cfg["model"]["d_architecture"] == "orig"
    assert cfg["model"]["minibatch_stddev"] == 32 and cfg["dataset"]["num_classes"] == 10
    r = cli("sample", f"run={run}", "labels=[0,3,9]", f"out={tmp_path / 'c.npz'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    f = np.load(tmp_path / "c.npz")
    assert f["arr_0"].shape == (3, 32, 32, 3) and f["labels"].tolist() == [0, 3, 9]


def test_compose_of_the_imported_config_is_what_the_model_builds(official):
    """The config keys the importer writes are the ones ganlab's StyleGAN2 reads (a guard against drift)."""
    cfg = compose("model=stylegan", "model.channel_base=256", "model.channel_max=16", "model.mapping_layers=2",
                  "model.z_dim=16", "model.w_dim=16", "model.conv_clamp=256")
    g, d = sg.build(cfg.model, (1, 32, 32), 32)
    assert g.state_dict().keys() == official["G"].state_dict().keys()
    assert d.state_dict().keys() == official["D"].state_dict().keys()


# --------------------------------------------------------------------- CycleGAN generator state dicts
def _official_resnet_state(blocks: int, channels: int, old_keys: bool, dropout: bool, seed: int) -> tuple[dict, torch.nn.Module]:
    """A ResnetGenerator state dict in the official key layout (model.<i>..., conv_block), written from ganlab's own
    generator (same layers): older checkpoints also carry the InstanceNorm running statistics; a generator with
    dropout in its blocks has its second block convolution one index later."""
    from ganlab.models.cyclegan import ResnetGenerator

    torch.manual_seed(seed)
    net = ResnetGenerator(channels, 8, blocks)
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    state = {}
    for key, value in net.state_dict().items():
        key = "model." + key[len("net."):]
        if dropout:
            key = key.replace("body.6.", "conv_block.7.").replace("body.5.", "conv_block.6.")
        state[key.replace("body.", "conv_block.")] = value.clone()
    if old_keys:  # InstanceNorm(track_running_stats=True) layers: after every conv but the last
        convs = [k[:-len(".weight")] for k in state if k.endswith(".weight")][:-1]
        for conv in convs:
            base, idx = conv.rsplit(".", 1)
            norm = f"{base}.{int(idx) + 1}"
            state[f"{norm}.running_mean"] = torch.randn(4)
            state[f"{norm}.running_var"] = torch.rand(4)
            state[f"{norm}.num_batches_tracked"] = torch.tensor(7)
    return state, net.eval()


@pytest.mark.parametrize("blocks,channels,old_keys,dropout", [(6, 3, False, False), (9, 1, True, True)])
def test_official_cyclegan_generators_import_and_translate_as_before(blocks, channels, old_keys, dropout, tmp_path):
    a2b, net_a = _official_resnet_state(blocks, channels, old_keys, dropout, 0)
    b2a, net_b = _official_resnet_state(blocks, channels, old_keys, dropout, 1)
    torch.save(a2b, tmp_path / "latest_net_G_A.pth")
    torch.save(b2a, tmp_path / "latest_net_G_B.pth")
    run = tmp_path / "run"
    out = cli("import", "cyclegan", str(tmp_path / "latest_net_G_A.pth"), f"b2a={tmp_path / 'latest_net_G_B.pth'}",
              f"out={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["config"]["model"]["blocks"] == blocks and state["config"]["model"]["width"] == 8
    from ganlab.translate import load_translator

    x = torch.rand(2, channels, 32, 32) * 2 - 1
    with torch.no_grad():
        for direction, net in (("a2b", net_a), ("b2a", net_b)):
            assert torch.equal(load_translator(state, direction)(x), net(x))
    # a folder through the imported run: names kept, sizes kept
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "photos" / "p.png")
    r = cli("translate", f"run={run}", f"in={tmp_path / 'photos'}", f"out={tmp_path / 'translated'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "translated" / "p.png").size == (56, 40)


def test_a_one_direction_import_refuses_the_other_and_non_generators_are_refused(tmp_path):
    a2b, _ = _official_resnet_state(6, 3, False, False, 0)
    torch.save(a2b, tmp_path / "g.pth")
    run = tmp_path / "run"
    assert cli("import", "cyclegan", str(tmp_path / "g.pth"), f"out={run}", cwd=tmp_path).returncode == 0
    (tmp_path / "in").mkdir()
    r = cli("translate", f"run={run}", f"in={tmp_path / 'in'}", "direction=b2a", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert r.returncode == 2 and "no b2a generator" in r.stderr
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    r = cli("import", "cyclegan", str(tmp_path / "other.pth"), f"out={tmp_path / 'run2'}", cwd=tmp_path)
    assert r.returncode == 2 and "is not a pytorch-CycleGAN-and-pix2pix generator state dict" in r.stderr
    r = cli("import", "pix2pix", str(tmp_path / "other.pth"), f"out={tmp_path / 'run3'}", cwd=tmp_path)
    assert r.returncode == 2 and "is not a pytorch-CycleGAN-and-pix2pix generator state dict" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run3").exists()


def test_a_crafted_state_dict_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    a2b, _ = _official_resnet_state(6, 3, False, False, 0)
    torch.save({**a2b, "model.1.extra": Marker()}, tmp_path / "evil.pth")
    out = run_cli("import", "cyclegan", str(tmp_path / "evil.pth"), f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert f"{tmp_path / 'evil.pth'} was refused" in out.stderr and "posix.system" in out.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------- pix2pix's UnetGenerator
def _official_unet_state(downs: int, channels: int, norm: str, seed: int) -> tuple[dict, torch.nn.Module]:
    """A UnetGenerator state dict in the official key layout, written by this test from the authors' nesting
    rules (not from the importer): the outermost block's Sequential is `model.model` = [downconv 0, inner block
    1, ReLU 2, upconv 3, Tanh 4]; a middle block's is [LeakyReLU 0, downconv 1, downnorm 2, inner block 3, ReLU
    4, upconv 5, upnorm 6 (, Dropout 7)]; the innermost's [LeakyReLU 0, downconv 1, ReLU 2, upconv 3, upnorm 4].
    The weights come from ganlab's flat U-Net, level k's down layers and the up layers at downs - 1 - k."""
    from ganlab.models.unet import UnetGenerator

    torch.manual_seed(seed)
    net = UnetGenerator(channels, channels, downs, 4, norm, dropout=True)
    for name, p in net.named_parameters():
        torch.nn.init.normal_(p, 1.0 if name.endswith("2.weight") else 0.0, 0.05)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.num_batches_tracked.fill_(9)
    ours = net.state_dict()
    state, prefix = {}, "model.model."
    for k in range(downs):
        up = f"up.{downs - 1 - k}."
        if k == 0:
            places = {"down.0.0.": "0.", up + "1.": "3."}
        elif k == downs - 1:
            places = {f"down.{k}.1.": "1.", up + "1.": "3.", up + "2.": "4."}
        else:
            places = {f"down.{k}.1.": "1.", f"down.{k}.2.": "2.", up + "1.": "5.", up + "2.": "6."}
        for flat, nested in places.items():
            for key, value in ours.items():
                if key.startswith(flat):
                    state[prefix + nested + key[len(flat):]] = value.clone()
        prefix += "1.model." if k == 0 else "3.model."
    assert len(state) == len(ours)
    return state, net.eval()


@pytest.mark.parametrize("downs,channels,norm", [(7, 3, "batch"), (8, 1, "instance")])
def test_an_official_pix2pix_unet_imports_and_translates_in_eval_mode(downs, channels, norm, tmp_path):
    state, net = _official_unet_state(downs, channels, norm, 0)
    assert ("model.model.1.model.3.model.2.running_var" in state) == (norm == "batch")
    torch.save(state, tmp_path / "latest_net_G.pth")
    run = tmp_path / "run"
    out = cli("import", "pix2pix", str(tmp_path / "latest_net_G.pth"), f"out={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    imported = load_checkpoint(run / "checkpoints" / "last.pt")
    m = imported["config"]["model"]
    assert (m["generator"], m["unet_downs"], m["width"], m["norm"]) == ("unet", downs, 4, norm)
    from ganlab.translate import load_translator

    g = load_translator(imported, "a2b")
    x = torch.rand(2, channels, 2 ** downs, 2 ** downs) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), net(x))  # eval mode: batch norm's running statistics, no dropout
        assert torch.equal(g(x), g(x))
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(tmp_path / "photos" / "p.png")
    r = cli("translate", f"run={run}", f"in={tmp_path / 'photos'}", f"out={tmp_path / 'translated'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "translated" / "p.png").size == (70, 40)
    r = cli("translate", f"run={run}", f"in={tmp_path / 'photos'}", "direction=b2a", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert r.returncode == 2 and "no b2a generator" in r.stderr


def test_translate_keeps_the_aspect_ratio_by_padding_to_what_g_needs():
    from ganlab.translate import fitted, unpadded

    x = torch.rand(1, 3, 40, 70) * 2 - 1
    y, pad = fitted(x, 32, 4, "aspect")
    assert tuple(y.shape[-2:]) == (32, 56) and pad == (0, 0, 0, 0)  # 70 * 32/40 = 56: a multiple of 4 already
    y, pad = fitted(x, 128, 128, "aspect")  # unet_128: sides a multiple of 128
    assert tuple(y.shape[-2:]) == (128, 256) and pad == (16, 16, 0, 0)  # 224 wide, reflect-padded to 256
    assert tuple(unpadded(y, pad).shape[-2:]) == (128, 224)
    assert torch.equal(unpadded(y, pad), torch.nn.functional.interpolate(x, size=(128, 224), mode="bilinear",
                                                                          antialias=True, align_corners=False))
    y, pad = fitted(x, 32, 4, "square")
    assert tuple(y.shape[-2:]) == (32, 32) and pad == (0, 0, 0, 0)
