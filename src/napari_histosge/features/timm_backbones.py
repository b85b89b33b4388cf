"""Foundation-model and timm backbones: ``uni`` and ``timm:<model_name>``.

Networks are built lazily on the first :meth:`extract` call (or on reading
``dim``), so creating an extractor to learn its cache identity is cheap.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import InputError
from .base import FeatureExtractor, register_extractor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0  # random-weight models are seeded so their identity is stable


def checkpoint_identity(path: str) -> str:
    """A weights file's identity in cache keys: its absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _check_checkpoint_path(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError("checkpoint file not found", p)
    return str(p)


def read_state_dict(path: str) -> dict[str, Any]:
    """Read a weights file as a flat state dict (unwrapping common wrappers)."""
    import torch

    sd: Any  # a state dict, or a wrapper holding one
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors vary
        raise InputError(f"cannot read checkpoint ({load_error_reason(exc)})", path) from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise InputError("checkpoint does not contain a state dict of tensors", path)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_error_reason(exc: BaseException) -> str:
    """One line about why a weights file did not load; never torch's advice to unpickle unsafely.

    ``torch.load(weights_only=True)`` refuses a pickle holding other objects with a
    multi-line message that suggests ``weights_only=False`` (which would run code from
    the file): that advice never reaches a user.
    """
    text = str(exc)
    foreign = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if foreign:
        return (f"it holds objects other than tensors and plain values, such as {foreign.group(1)}, which are "
                "never loaded")
    if "weights_only" in text or "Weights only load failed" in text:
        return "not a pickle torch.save writes: another kind of file, or a damaged one"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first if len(first) <= 160 else first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def check_fits(model: Any, sd: dict[str, Any], path: str, what: str) -> None:
    """Raise a clear InputError when ``sd`` has other keys or shapes than ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        if bad_shape:
            k = bad_shape[0]
            detail.append(f"shape mismatch for {k!r}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}")
        raise InputError(f"checkpoint does not fit {what}: " + "; ".join(detail), path)


def _load_into(model: Any, sd: dict[str, Any], path: str, what: str) -> None:
    """Load ``sd`` strictly, with a clear error on mismatching keys or shapes."""
    check_fits(model, sd, path, what)
    model.load_state_dict(sd, strict=True)


class PooledTimmExtractor(FeatureExtractor):
    """Shared batching/normalisation for timm models returning pooled features."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        super().__init__(arg, checkpoint=_check_checkpoint_path(checkpoint), device=device)
        self._model: Any = None

    def _build(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        """The network in eval mode on the extractor's device, built on first use."""
        if self._model is None:
            model = self._build()
            self._model = model.eval().to(self.device)
        return self._model

    @property
    def dim(self) -> int:  # type: ignore[override]
        """Length of a pooled feature vector."""
        return int(self.model.num_features)

    def extract(self, patches: Any) -> Any:
        """Pooled features of uint8 ``(n, H, W, 3)`` patches, resized and normalised as the model expects."""
        import torch
        import torch.nn.functional as F

        model = self.model
        with torch.inference_mode():
            x = patches.to(self.device).permute(0, 3, 1, 2).float() / 255.0
            if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
            mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
            out = model((x - mean) / std)
            if out.ndim > 2:  # some models keep a spatial map even with num_classes=0
                out = out.flatten(2).mean(-1)
            return out.float()


@register_extractor("timm:")
class TimmExtractor(PooledTimmExtractor):
    """Any timm model by name (random weights unless a local checkpoint is given)."""

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        import timm

        if not arg or not timm.is_model(arg):
            close = timm.list_models(f"*{arg}*")[:10] if arg else []
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise InputError(
                f"unknown timm model {arg!r}; use 'timm:<model_name>' with a name from "
                f"timm.list_models(){hint}"
            )
        super().__init__(arg, checkpoint=checkpoint, device=device)
        self.model_name: str = arg
        pretrained = timm.get_pretrained_cfg(arg)
        cfg: dict[str, Any] = pretrained.to_dict() if pretrained is not None else {}
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))

    @property
    def identity(self) -> str:
        """Names the timm model, its weights (file or seeded random) and the input size."""
        weights = checkpoint_identity(self.checkpoint) if self.checkpoint else f"random-seed{RANDOM_SEED}"
        return f"timm:{self.arg}|{weights}|in{self.input_size}"

    def _build(self) -> Any:
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(self.model_name, pretrained=False, num_classes=0)
        if self.checkpoint:
            sd = read_state_dict(self.checkpoint)
            # Checkpoints saved with a classifier head: drop it (we use pooled features).
            head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "")
            own = model.state_dict()
            if head:
                sd = {k: v for k, v in sd.items() if k in own or not k.startswith(head + ".")}
            _load_into(model, sd, self.checkpoint, f"timm model {self.arg!r}")
        return model


UNI_ARCH = "vit_large_patch16_224"
UNI_REPO = "MahmoodLab/uni"
UNI_HUB = f"hf-hub:{UNI_REPO}"
#: Weights files of the UNI repository, as the Hugging Face cache may hold them.
UNI_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
#: Seconds to wait for the hub's host to answer before calling the machine offline.
HUB_PROBE_TIMEOUT_S = 1.5
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def cached_uni_weights() -> str | None:
    """The UNI weights file in the local Hugging Face cache (from an earlier download), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in UNI_WEIGHT_FILES:
        found = try_to_load_from_cache(UNI_REPO, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub's host accepts a connection within ``timeout`` seconds.

    One attempt, bounded in time even when name resolution hangs (huggingface_hub itself
    retries with back-off for about half a minute). ``$HF_HUB_OFFLINE`` means no; behind a
    proxy the answer is left to the download.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    url = urlparse(constants.ENDPOINT)
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def uni_weights_source() -> str | None:
    """Where UNI's weights come from without a local file: the cached file, or ``None`` for a download.

    Raises
    ------
    InputError
        At once (no retries), when they are not cached and the hub cannot be reached.
    """
    cached = cached_uni_weights()
    if cached is not None:
        return cached
    if not hub_reachable():
        offline = "$HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "offline"
        token = "set" if os.environ.get("HF_TOKEN") else "not set"
        raise InputError(
            f"the UNI weights are not on this machine and the Hugging Face hub cannot be reached ({offline}; "
            f"HF_TOKEN is {token}); give a local checkpoint file (--weights FILE on the command line): "
            f"{UNI_WEIGHT_FILES[0]} of {UNI_REPO}, downloaded once where there is network (a gated repository: "
            "accept its terms and set HF_TOKEN)"
        )
    return None
UNI_KWARGS: dict[str, Any] = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)


@register_extractor("uni")
class UniExtractor(PooledTimmExtractor):
    """UNI (Chen et al. 2024) ViT-L/16 pathology foundation model, 1024 dims.

    Weights come from a local checkpoint, from an earlier download in the Hugging Face
    cache (read as a local file, offline), or from the gated Hugging Face repo
    ``MahmoodLab/uni`` using the ``HF_TOKEN`` environment variable; without any of them
    :func:`uni_weights_source` refuses at once.
    """

    input_size = 224

    @property
    def identity(self) -> str:
        """Names UNI and its weights (the local file, or the Hugging Face hub model)."""
        weights = checkpoint_identity(self.checkpoint) if self.checkpoint else UNI_HUB
        return f"uni|{weights}"

    @property
    def dim(self) -> int:  # type: ignore[override]
        """Length of a UNI feature vector."""
        return 1024  # known without loading the 300M-parameter network

    def _build(self) -> Any:
        import timm
        import torch

        # Cached weights are read as a local file: no network call (and no retries) at all.
        weights = self.checkpoint or uni_weights_source()
        if weights:
            sd = read_state_dict(weights)
            # Check keys/shapes against a weightless (meta) model before allocating one.
            with torch.device("meta"):
                skeleton = timm.create_model(UNI_ARCH, pretrained=False, **UNI_KWARGS)
            check_fits(skeleton, sd, weights, "UNI (vit_large_patch16_224)")
            model = timm.create_model(UNI_ARCH, pretrained=False, **UNI_KWARGS)
            _load_into(model, sd, weights, "UNI (vit_large_patch16_224)")
            return model
        try:
            kwargs = {k: v for k, v in UNI_KWARGS.items() if k in ("init_values", "dynamic_img_size")}
            return timm.create_model(UNI_HUB, pretrained=True, **kwargs)
        except Exception as exc:  # network, auth and hub errors vary
            token = "set" if os.environ.get("HF_TOKEN") else "not set"
            raise InputError(
                "could not download UNI weights from the Hugging Face hub "
                f"({UNI_REPO} is gated; HF_TOKEN is {token}): {load_error_reason(exc)}; give a local weights "
                "file instead (--weights FILE on the command line)"
            ) from None
