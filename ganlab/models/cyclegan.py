"""CycleGAN's networks (Zhu et al. 2017, appendix 7.2; the authors' PyTorch code's `resnet_6blocks` /
`resnet_9blocks` G and `basic` 70x70 PatchGAN D).

- G: reflection pad 3, conv7x7 (w), two stride-2 conv3x3 (2w, 4w), model.blocks residual blocks at 4w
  (reflection pad 1, conv3x3, norm, ReLU, reflection pad 1, conv3x3, norm; plus the input), two
  fractionally strided conv3x3 (2w, w), reflection pad 3, conv7x7 to the image, tanh. Instance norm
  (no affine, no running statistics) after every conv but the last, ReLU.
- D (PatchGAN): conv4x4 stride 2 (w), LeakyReLU 0.2; then stride-2 conv4x4 (2w, 4w) and a stride-1
  conv4x4 (8w), each with instance norm and LeakyReLU; a stride-1 conv4x4 to one score per patch.
  With model.d_layers = 3 each score sees a 70x70 patch of the input.
Weights from N(0, 0.02), biases 0, as in the authors' code. w = model.width (the paper: 64).
"""

from __future__ import annotations

from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.models.unet import NORMS, UnetGenerator, norm_layer

SUPPORTS = ("unpaired",)


class ResnetBlock(nn.Module):
    """[pad, conv3x3, norm, ReLU, (dropout 0.5), pad, conv3x3, norm] plus the input: the authors' layout."""

    def __init__(self, ch: int, norm: str = "instance", dropout: bool = False):
        super().__init__()
        bias = norm == "instance"
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm_layer(norm, ch),
                                  nn.ReLU(True), *([nn.Dropout(0.5)] if dropout else []),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm_layer(norm, ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """With batch norm the convs before a norm have no bias, with instance norm they have one (the authors' rule)."""

    def __init__(self, channels: int, width: int, blocks: int, norm: str = "instance", dropout: bool = False):
        super().__init__()
        w, bias = width, norm == "instance"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7, bias=bias), norm_layer(norm, w), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(w * mult, w * mult * 2, 3, stride=2, padding=1, bias=bias),
                       norm_layer(norm, w * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(4 * w, norm, dropout) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(w * mult, w * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(norm, w * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """`norm`: CycleGAN's instance norm, or pix2pix's nn.BatchNorm2d."""

    def __init__(self, channels: int, width: int, n_layers: int = 3, norm=nn.InstanceNorm2d, bias: bool = True):
        super().__init__()
        layers, ch = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)], width
        for i in range(1, n_layers + 1):
            out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, stride=2 if i < n_layers else 1, padding=1, bias=bias), norm(out),
                       nn.LeakyReLU(0.2, True)]
            ch = out
        layers += [nn.Conv2d(ch, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """One score per patch: N x 1 x h x w (the losses average over the patches)."""
        return self.net(x)


def _init(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):  # the authors' init_weights: N(1, 0.02) scales, zero shifts
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def generator_kind(model_cfg) -> dict:
    """G's architecture from the config: `model.generator` resnet (the paper) | unet (pix2pix's; the authors'
    CycleGAN code offers it too), `model.unet_downs`, `model.norm` instance | batch, `model.g_dropout`."""
    kind, norm = model_cfg.get("generator", "resnet"), model_cfg.get("norm", "instance")
    downs, dropout = model_cfg.get("unet_downs", 8), model_cfg.get("g_dropout", False)
    if kind not in ("resnet", "unet"):
        raise GanlabError(f"model.generator={kind!r} is not valid: use resnet (CycleGAN's) or unet (pix2pix's).")
    if norm not in NORMS:
        raise GanlabError(f"model.norm={norm!r} is not valid: use instance (CycleGAN's) or batch (pix2pix's).")
    if not isinstance(downs, int) or isinstance(downs, bool) or downs < 5:
        raise GanlabError(f"model.unet_downs={downs!r} is not valid: give an integer >= 5 (unet_128: 7, unet_256: 8).")
    if not isinstance(dropout, bool):
        raise GanlabError(f"model.g_dropout={dropout!r} is not valid: use true or false.")
    return {"kind": kind, "norm": norm, "downs": downs, "dropout": dropout}


def size_multiple(model_cfg) -> int:
    """What G's input sides must be a multiple of: 4 (ResNet G halves twice) or 2^downs (U-Net to 1x1)."""
    g = generator_kind(model_cfg)
    return 2 ** g["downs"] if g["kind"] == "unet" else 4


def make_generator(model_cfg, channels: int) -> nn.Module:
    g = generator_kind(model_cfg)
    if g["kind"] == "unet":
        return UnetGenerator(channels, channels, g["downs"], model_cfg.width, g["norm"], g["dropout"])
    return ResnetGenerator(channels, model_cfg.width, model_cfg.blocks, g["norm"], g["dropout"])


def build(model_cfg, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(G_AB, G_BA, D_A, D_B) for images of `shape` (C, H, W)."""
    blocks, d_layers, width = model_cfg.blocks, model_cfg.d_layers, model_cfg.width
    for key, value, low in (("blocks", blocks, 0), ("d_layers", d_layers, 1), ("width", width, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GanlabError(f"model.{key}={value!r} is not valid: give an integer >= {low} (the paper: blocks 6 at "
                              "128 px or 9 at 256 px, d_layers 3, width 64).")
    size, need, multiple = int(shape[-1]), 2 ** (d_layers + 2), size_multiple(model_cfg)
    if size % multiple or size < max(need, multiple):
        raise GanlabError(f"model={model_cfg.name} needs images of at least {max(need, multiple)} px and a multiple "
                          f"of {multiple} (G halves them {'twice' if multiple == 4 else 'to 1x1'}, the {d_layers}-layer "
                          f"PatchGAN D shrinks them to patches); the data are {size} px: set dataset.resolution or "
                          "lower model.d_layers" + (" / model.unet_downs." if multiple > 4 else "."))
    c, norm = int(shape[0]), generator_kind(model_cfg)["norm"]
    d_norm = nn.BatchNorm2d if norm == "batch" else nn.InstanceNorm2d
    return (_init(make_generator(model_cfg, c)), _init(make_generator(model_cfg, c)),
            _init(PatchDiscriminator(c, width, d_layers, d_norm, bias=norm == "instance")),
            _init(PatchDiscriminator(c, width, d_layers, d_norm, bias=norm == "instance")))
