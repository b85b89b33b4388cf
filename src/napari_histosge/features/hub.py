"""Encoders published on the Hugging Face hub as timm models: ``hf:<org>/<name>`` (or timm's ``hf-hub:<org>/<name>``).

A hub repository of a timm model holds ``config.json`` (timm's ``architecture``,
``num_classes``, ``global_pool``, ``model_args`` and ``pretrained_cfg`` with ``mean``, ``std``
and ``input_size``) and its weights (``model.safetensors`` or ``pytorch_model.bin``). The
network, its preprocessing and which token or pooling is the feature all come from that
configuration. The files are read from a local folder (``--weights DIR``: the repository
copied to an offline machine), from an earlier download in the Hugging Face cache, or from
the hub itself when it can be reached. :func:`check_hub_model` refuses a bad folder or an
unreachable hub in one line before any slide is read.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import register_extractor
from .timm_backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PooledTimmExtractor,
    check_fits,
    checkpoint_identity,
    hub_reachable,
    load_error_reason,
    read_state_dict,
)

#: The spec prefixes of hub models: ours, and the one timm's ``create_model`` takes.
HUB_PREFIXES = ("hf:", "hf-hub:")
CONFIG_FILE = "config.json"
#: Weights files of a timm hub repository, in the order timm prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Module prefixes a ``model_args`` layer named by a string may come from (UNI2-h, Virchow2 name
#: ``timm.layers.SwiGLUPacked`` and ``torch.nn.SiLU``); nothing else is imported by name.
LAYER_MODULES = ("timm.", "torch.nn.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_spec(spec: str) -> bool:
    """Whether ``spec`` names a hub model (``hf:<org>/<name>`` or ``hf-hub:<org>/<name>``)."""
    return str(spec).strip().startswith(HUB_PREFIXES)


def check_repo_id(repo: str | None) -> str:
    """``repo`` if it is ``<org>/<name>``, else a one-line :class:`InputError`."""
    if not repo or not _REPO_ID.match(repo):
        raise InputError(f"a hub model is named hf:<org>/<name> (e.g. hf:bioptimus/H-optimus-0), got {repo!r}")
    return repo


def read_hub_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The timm configuration of a hub folder: ``architecture``, ``model_args``, ``pretrained_cfg``, ``global_pool``.

    Raises
    ------
    InputError
        If the folder is missing, holds no ``config.json``, or the file is not a timm model's.
    """
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise InputError("a hub model's weights are its folder: give the folder holding config.json and the "
                         "weights, not a file", folder)
    if not folder.is_dir():
        raise InputError("the hub model folder does not exist (give the folder holding config.json and the "
                         "weights)", folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"the hub model folder has no {CONFIG_FILE}: copy the whole repository folder from the hub",
                         folder)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {CONFIG_FILE} ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str):
        raise InputError(f"{CONFIG_FILE} names no timm 'architecture': not a timm model (a transformers model "
                         "such as Phikon-v2 is not loaded by timm)", path)
    pretrained: dict[str, Any] = raw["pretrained_cfg"] if isinstance(raw.get("pretrained_cfg"), dict) else {}
    _check_preprocessing(pretrained, path)
    if not isinstance(raw.get("model_args") or {}, dict):
        raise InputError(f"{CONFIG_FILE}'s model_args is not an object of timm keyword arguments", path)
    model_args = dict(raw.get("model_args") or {})
    pool = model_args.pop("global_pool", raw.get("global_pool"))
    return {"architecture": raw["architecture"], "model_args": model_args, "pretrained_cfg": pretrained,
            "global_pool": pool}


def _check_preprocessing(pretrained: dict[str, Any], path: Path) -> None:
    """One line for a ``pretrained_cfg`` whose input size, mean or std is not of the shape timm writes."""
    size = pretrained.get("input_size", (3, 224, 224))
    if not (isinstance(size, (list, tuple)) and size and all(isinstance(v, int) and v > 0 for v in size)):
        raise InputError(f"{CONFIG_FILE}'s pretrained_cfg.input_size must be a list such as [3, 224, 224], "
                         f"got {size!r}", path)
    for key in ("mean", "std"):
        value = pretrained.get(key, IMAGENET_MEAN)
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, (int, float)) for v in value)):
            raise InputError(f"{CONFIG_FILE}'s pretrained_cfg.{key} must be three numbers (one per channel), "
                             f"got {value!r}", path)


def hub_weights_file(folder: str | os.PathLike) -> str:
    """The weights file of a hub folder, or a one-line :class:`InputError` when it holds none."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    raise InputError(f"the hub model folder has no weights ({' or '.join(WEIGHT_FILES)})", folder)


def _layer(value: Any) -> Any:
    """A layer class a ``model_args`` string names (``timm.layers.SwiGLUPacked``), else ``value`` unchanged."""
    if not isinstance(value, str) or not value.startswith(LAYER_MODULES) or "." not in value:
        return value
    module, _, name = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise InputError(f"the hub model's config names a layer this timm does not have: {value}") from None


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """``timm.create_model`` keywords of a hub configuration: its ``model_args``, pooled features, no head."""
    kwargs = {key: _layer(value) for key, value in config["model_args"].items()}
    kwargs["num_classes"] = 0  # the pooled features, not a classifier
    if config.get("global_pool") is not None:
        kwargs["global_pool"] = config["global_pool"]
    return kwargs


def cached_hub_folder(repo: str) -> str | None:
    """The folder of ``repo`` in the local Hugging Face cache when its config and weights are there, else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, CONFIG_FILE)
    if not isinstance(config, str) or not os.path.isfile(config):
        return None
    if not any(isinstance(w := try_to_load_from_cache(repo, name), str) and os.path.isfile(w)
               for name in WEIGHT_FILES):
        return None
    return str(Path(config).parent)


def _skeleton(config: dict[str, Any]) -> Any:
    """The network of ``config`` without memory (meta device): cheap even for a ViT-g."""
    import timm
    import torch

    if not timm.is_model(config["architecture"]):
        raise InputError(f"this timm ({timm.__version__}) has no architecture {config['architecture']!r}: "
                         "update timm")
    try:
        with torch.device("meta"):
            return timm.create_model(config["architecture"], pretrained=False, **model_kwargs(config))
    except InputError:
        raise
    except Exception as exc:  # timm raises many types for arguments its model does not take
        raise InputError(f"timm cannot build {config['architecture']} from the hub config: "
                         f"{load_error_reason(exc)}") from None


def _head_free(sd: dict[str, Any], model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``sd`` without a classifier head the feature network (``num_classes=0``) does not have."""
    head = str(config["pretrained_cfg"].get("classifier") or getattr(model, "pretrained_cfg", {}).get("classifier")
               or "")
    own = model.state_dict()
    return {k: v for k, v in sd.items() if k in own or not (head and k.startswith(head + "."))}


def weight_shapes(path: str) -> dict[str, Any]:
    """The tensors of a weights file as memory-free (meta) tensors: their names and shapes only.

    A safetensors file's header is read alone; a torch pickle is mapped, not read (an old,
    unmappable pickle is read whole).
    """
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged or unmappable file: the full reader says what is wrong in one line
        sd = read_state_dict(path)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise InputError("the weights file does not contain a state dict of tensors", path)
    return {k.removeprefix("module."): torch.empty(tuple(v.shape), device="meta") for k, v in sd.items()}


def check_hub_model(spec: str, folder: str | os.PathLike | None) -> None:
    """Refuse, in one line and before any slide is read, a hub model that cannot load.

    A local ``folder`` must hold ``config.json`` of a timm model and weights that fit its
    architecture (keys and shapes, checked on a memory-free skeleton). Without a folder the
    model must be in the Hugging Face cache or the hub reachable.
    """
    repo = check_repo_id(str(spec).partition(":")[2])
    if folder is None:
        if cached_hub_folder(repo) is None and not hub_reachable():
            raise InputError(f"{repo} is not on this machine and the Hugging Face hub cannot be reached: copy the "
                             "repository's folder (config.json and the weights) here and give it as the weights "
                             "(--weights DIR)")
        return
    config = read_hub_config(folder)
    weights = hub_weights_file(folder)
    skeleton = _skeleton(config)
    check_fits(skeleton, _head_free(weight_shapes(weights), skeleton, config), weights,
                f"{config['architecture']} of {folder}/{CONFIG_FILE}")


@register_extractor("hf:")
class HubExtractor(PooledTimmExtractor):
    """A timm model of the Hugging Face hub: its network, preprocessing and pooling from its ``config.json``.

    ``checkpoint`` is the repository's folder on disk; without it the Hugging Face cache,
    then the hub itself (``HF_TOKEN`` for a gated repository).
    """

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        repo = check_repo_id(arg)
        folder = str(Path(checkpoint).expanduser()) if checkpoint else None
        if folder is not None:
            read_hub_config(folder)  # a bad folder fails here, before any patch is read
            hub_weights_file(folder)
        super().__init__(repo, device=device)
        self.checkpoint = folder
        self.repo = repo
        self._config: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The hub configuration (read from the folder, the cache, or downloaded: config.json only)."""
        if self._config is None:
            folder = self._folder()
            self._config = read_hub_config(folder) if folder else self._download_config()
        return self._config

    def _folder(self) -> str | None:
        return self.checkpoint or cached_hub_folder(self.repo)

    def _download_config(self) -> dict[str, Any]:
        from huggingface_hub import hf_hub_download

        check_hub_model(f"hf:{self.repo}", None)
        try:
            return read_hub_config(Path(hf_hub_download(self.repo, CONFIG_FILE)).parent)
        except Exception as exc:  # network, auth and hub errors vary
            raise InputError(f"could not read {self.repo}'s {CONFIG_FILE} from the Hugging Face hub "
                             f"({load_error_reason(exc)}); a gated model needs its terms accepted and HF_TOKEN "
                             "set; or copy its folder here (--weights DIR)") from None

    @property
    def input_size(self) -> int:  # type: ignore[override]
        """The patch edge the model's ``pretrained_cfg`` asks for."""
        return int(self.config["pretrained_cfg"].get("input_size", (3, 224, 224))[-1])

    @property
    def mean(self) -> tuple[float, ...]:  # type: ignore[override]
        """Per-channel mean of the model's own preprocessing."""
        return tuple(self.config["pretrained_cfg"].get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, ...]:  # type: ignore[override]
        """Per-channel standard deviation of the model's own preprocessing."""
        return tuple(self.config["pretrained_cfg"].get("std", IMAGENET_STD))

    @property
    def identity(self) -> str:
        """Names the repository, its weights (the local file, or the hub), input size and pooling."""
        folder = self._folder()
        weights = checkpoint_identity(hub_weights_file(folder)) if folder else f"hub:{self.repo}"
        return f"hf:{self.repo}|{weights}|in{self.input_size}|pool-{self.config.get('global_pool') or 'default'}"

    def _build(self) -> Any:
        import timm

        folder = self._folder()
        if folder is None:
            return self._download()
        config, weights = self.config, hub_weights_file(folder)
        skeleton = _skeleton(config)
        sd = _head_free(read_state_dict(weights), skeleton, config)
        check_fits(skeleton, sd, weights, f"{config['architecture']} of {folder}/{CONFIG_FILE}")
        model = timm.create_model(config["architecture"], pretrained=False, **model_kwargs(config))
        model.load_state_dict(sd, strict=True)
        return model

    def _download(self) -> Any:
        """The model from the hub by timm itself (network; ``HF_TOKEN`` for gated repositories)."""
        import timm

        try:
            return timm.create_model(f"hf-hub:{self.repo}", pretrained=True, **model_kwargs(self.config))
        except Exception as exc:  # network, auth and hub errors vary
            token = "set" if os.environ.get("HF_TOKEN") else "not set"
            raise InputError(f"could not download {self.repo} from the Hugging Face hub (HF_TOKEN is {token}): "
                             f"{load_error_reason(exc)}; copy its folder here instead (--weights DIR)") from None


register_extractor("hf-hub:")(HubExtractor)
