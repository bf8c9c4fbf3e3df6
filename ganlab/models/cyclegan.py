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

SUPPORTS = ("unpaired",)


class ResnetBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(w * mult, w * mult * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(w * mult * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(4 * w) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(w * mult, w * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """`norm`: CycleGAN's instance norm, or pix2pix's nn.BatchNorm2d."""

    def __init__(self, channels: int, width: int, n_layers: int = 3, norm=nn.InstanceNorm2d):
        super().__init__()
        layers, ch = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)], width
        for i in range(1, n_layers + 1):
            out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, stride=2 if i < n_layers else 1, padding=1), norm(out),
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
            nn.init.zeros_(m.bias)
    return module


def build(model_cfg, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(G_AB, G_BA, D_A, D_B) for images of `shape` (C, H, W)."""
    blocks, d_layers, width = model_cfg.blocks, model_cfg.d_layers, model_cfg.width
    for key, value, low in (("blocks", blocks, 0), ("d_layers", d_layers, 1), ("width", width, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GanlabError(f"model.{key}={value!r} is not valid: give an integer >= {low} (the paper: blocks 6 at "
                              "128 px or 9 at 256 px, d_layers 3, width 64).")
    size, need = int(shape[-1]), 2 ** (d_layers + 2)
    if size % 4 or size < need:
        raise GanlabError(f"model={model_cfg.name} needs images of at least {need} px and a multiple of 4 (G halves "
                          f"them twice, the {d_layers}-layer PatchGAN D shrinks them to patches); the data are "
                          f"{size} px: set dataset.resolution (e.g. 32 or 64) or lower model.d_layers.")
    c = int(shape[0])
    return (_init(ResnetGenerator(c, width, blocks)), _init(ResnetGenerator(c, width, blocks)),
            _init(PatchDiscriminator(c, width, d_layers)), _init(PatchDiscriminator(c, width, d_layers)))
