"""The weight-free default extractor: multi-scale colour and texture descriptors.

Works offline and runs batched in torch. Colour is described in RGB and in
haematoxylin/eosin optical density (Ruifrok & Johnston colour deconvolution);
texture by Sobel gradient energy and local variance at two scales. Every
descriptor is computed on the spot-sized centre of the patch and on the whole
context patch, since expression depends on both the spot's own cells and its
neighbourhood.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import FeatureExtractor, register_extractor

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)

_QUANTILES = (0.1, 0.5, 0.9)
_CHANNELS = ("r", "g", "b", "hema", "eosin", "od")
# Optical-density thresholds: tissue vs glass, and stain-dense pixels (nuclei / stroma).
_TISSUE_OD = 0.12
_HEMA_OD = (0.25, 0.5)
_EOSIN_OD = 0.3


def _feature_names() -> list[str]:
    names: list[str] = []
    for region in ("centre", "context"):
        for c in _CHANNELS:
            names += [f"{region}_{c}_mean", f"{region}_{c}_std"]
            names += [f"{region}_{c}_q{int(q * 100)}" for q in _QUANTILES]
        names += [f"{region}_tissue_frac", f"{region}_eosin_frac"]
        names += [f"{region}_nuclei_frac_{t}" for t in _HEMA_OD]
        names.append(f"{region}_hema_ratio")
        for scale in (1, 2):
            names += [f"{region}_grad_grey_s{scale}", f"{region}_grad_hema_s{scale}"]
            names += [f"{region}_var_grey_s{scale}", f"{region}_var_hema_s{scale}"]
    return names


FEATURE_NAMES = _feature_names()


@register_extractor("default")
class DefaultExtractor(FeatureExtractor):
    """Hand-crafted colour/texture features (86 dims), no weights needed."""

    dim = len(FEATURE_NAMES)
    input_size = 64
    feature_names = FEATURE_NAMES
    VERSION = 1

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        super().__init__(arg, checkpoint=checkpoint, device=device)
        import torch

        self._hed = torch.tensor(_HED_FROM_RGB, dtype=torch.float32, device=self.device)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=self.device)
        self._sobel = torch.stack([sobel, sobel.T])[:, None] / 8.0  # (2, 1, 3, 3)

    @property
    def identity(self) -> str:
        """Names the descriptor version, patch size and centre fraction (part of cache keys)."""
        return f"default-v{self.VERSION}-in{self.input_size}-cf{self.center_fraction:.4f}"

    def extract(self, patches: Any) -> Any:
        """Colour and texture descriptors of a ``(n, H, W, 3)`` uint8 batch, float32 ``(n, dim)``."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = patches.to(self.device).permute(0, 3, 1, 2).float()  # (n, 3, H, W) in 0..255
            if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
            rgb = x / 255.0
            od = -torch.log10((x + 1.0) / 256.0)  # optical density per RGB channel
            hed = torch.einsum("nchw,cd->ndhw", od, self._hed).clamp_min(0)
            hema, eosin = hed[:, 0:1], hed[:, 1:2]
            od_mean = od.mean(1, keepdim=True)
            maps = torch.cat([rgb, hema, eosin, od_mean], 1)  # (n, 6, H, W)
            grey = rgb.mean(1, keepdim=True)
            tex_in = torch.cat([grey, hema], 1)  # (n, 2, H, W)
            textures = []  # per scale: (n, 4, h, w) gradient + variance maps
            for scale in (1, 2):
                t = tex_in if scale == 1 else F.avg_pool2d(tex_in, 2)
                textures.append(torch.cat([self._gradient(t), self._local_var(t)], 1))
            size = maps.shape[-1]
            out = []
            for region in ("centre", "context"):
                out.append(self._region_stats(maps, textures, size, region))
            return torch.cat(out, 1).float()

    def _gradient(self, t: Any) -> Any:
        import torch.nn.functional as F

        n, c, h, w = t.shape
        g = F.conv2d(F.pad(t.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), self._sobel)
        return (g.square().sum(1)).reshape(n, c, h, w)

    @staticmethod
    def _local_var(t: Any) -> Any:
        import torch.nn.functional as F

        mean = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
        sq = F.avg_pool2d(t.square(), 3, stride=1, padding=1, count_include_pad=False)
        return (sq - mean.square()).clamp_min(0)

    def _crop(self, m: Any, region: str) -> Any:
        if region == "context":
            return m
        s = m.shape[-1]
        c = max(1, int(round(s * min(max(self.center_fraction, 0.0), 1.0))))
        a = (s - c) // 2
        return m[..., a : a + c, a : a + c]

    def _region_stats(self, maps: Any, textures: list[Any], size: int, region: str) -> Any:
        import torch

        crop = self._crop(maps, region)
        m = crop.flatten(2)  # (n, 6, p)
        # Quantiles from a strided subsample of <= ~1024 px: sorting dominates the cost.
        stride = max(1, int((m.shape[-1] / 1024) ** 0.5))
        sub = crop[..., ::stride, ::stride].flatten(2)
        p = sub.shape[-1]
        sorted_m = sub.sort(-1).values
        q_idx = torch.tensor([round(q * (p - 1)) for q in _QUANTILES], device=m.device)
        quant = sorted_m.index_select(-1, q_idx)  # (n, 6, 3)
        stats = torch.cat([m.mean(-1, keepdim=True), m.std(-1, keepdim=True, unbiased=False), quant], -1)
        feats = [stats.flatten(1)]
        hema, eosin, od = m[:, 3], m[:, 4], m[:, 5]
        tissue = od > _TISSUE_OD
        feats.append(tissue.float().mean(-1, keepdim=True))
        feats.append((eosin > _EOSIN_OD).float().mean(-1, keepdim=True))
        for t in _HEMA_OD:
            feats.append((hema > t).float().mean(-1, keepdim=True))
        # Haematoxylin share of stain on tissue pixels: cellularity vs stroma/cytoplasm.
        w = tissue.float()
        h_sum, e_sum = (hema * w).sum(-1, keepdim=True), (eosin * w).sum(-1, keepdim=True)
        feats.append(h_sum / (h_sum + e_sum + 1e-6))
        for tex in textures:
            # Root-mean-square: same units as the image, comparable scale to the colour stats.
            feats.append(self._crop(tex, region).flatten(2).mean(-1).sqrt())  # (n, 4)
        return torch.cat(feats, 1)
