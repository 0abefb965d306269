"""Segmentation network: an smp encoder-decoder, a segmentation head and a projection head.

The contract (shapes for a 3-channel 64x64 input, DeepLabV3+, ResNet-18)::

    x (B, 3, 64, 64) in [0, 1]
      -> normalise with ``mean``/``std`` (the model owns its input statistics)
      -> pad to a multiple of the encoder's output stride (odd sizes work)
      -> encoder features [(B, 3, 64, 64), (B, 64, 32, 32), ..., (B, 512, 4, 4)]
      -> decoder features (B, 256, 16, 16)     # 1/4 resolution for DeepLabV3+
      -> segmentation head -> logits (B, C, 64, 64), cropped back to the input size
      -> projection head   -> embeddings (B, D, 16, 16), L2-normalised, cropped to ceil(H/4)
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants  # smp downloads its weights through it
from segmentation_models_pytorch.encoders import is_equivalent_to_timm_universal
from torch import Tensor, nn

from pixcon.config import ConfigError, ModelConfig, RunConfig
from pixcon.models.heads import ProjectionHead

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_ENCODER = "resnet18"

# smp architectures by the names the CLI accepts.
ARCHITECTURES: dict[str, str] = {
    "deeplabv3plus": "DeepLabV3Plus",
    "deeplabv3": "DeepLabV3",
    "unet": "Unet",
    "fpn": "FPN",
}


def check_encoder_name(encoder: str) -> None:
    """Raises ``ValueError`` unless smp can build ``encoder`` without downloading anything.

    Three kinds of names work: smp's own encoders (``resnet18``, ``mobilenet_v2``, ...; see
    ``smp.encoders.get_encoder_names()``), ``tu-<timm model>`` (smp's timm universal encoder, any
    model ``timm.is_model`` knows, e.g. ``tu-resnet10t``, ``tu-tf_mobilenetv3_small_100``; a
    ``.tag`` suffix names a pretrained variant, loaded only with ``model.encoder_weights: imagenet``) and smp's deprecated
    ``timm-*`` aliases of those (``timm-mobilenetv3_small_100``).
    """
    if encoder in smp.encoders.get_encoder_names():
        return
    if encoder.startswith("tu-"):
        model = encoder[3:].split(".", 1)[0]
        if model and timm.is_model(model):
            return
        close = timm.list_models(f"*{model[:6]}*")[:10] if model else []
        raise ValueError(
            f"unknown encoder {encoder!r}: timm has no model {model!r}"
            + (f" (similar: {close})" if close else "")
        )
    if encoder.startswith("timm-") and is_equivalent_to_timm_universal(encoder):
        return
    raise ValueError(
        f"unknown encoder {encoder!r}; smp encoders include "
        f"{sorted(smp.encoders.get_encoder_names())[:40]} ..., or 'tu-<timm model name>' "
        "(e.g. 'tu-resnet10t')"
    )


class Segmenter(nn.Module):
    """Encoder -> decoder -> (segmentation head, projection head).

    Args:
        arch: One of :data:`ARCHITECTURES`.
        encoder: An smp encoder name (``resnet18``, ``resnet50``, ...) or ``tu-<timm model>``
            (see :func:`check_encoder_name`). Weights start random.
        num_classes: Output classes C.
        in_channels: Input bands (3 for RGB, 4 for RGB-IR, ...).
        proj_dim: Embedding dimension D of the projection head.
        proj_layers: Layers of the projection head (1 to 3).
        mean, std: Per-band input statistics, length ``in_channels``; ImageNet's for 3 bands.
        encoder_weights: A name of weights smp has for ``encoder`` (``imagenet``, see
            :func:`smp_weight_names`), loaded by smp itself (:func:`smp_network`), or None for
            random weights. A local state dict goes through :func:`create_segmenter`.
    """

    mean: Tensor  # (1, C_in, 1, 1) buffer (registered in __init__, not saved)
    std: Tensor  # (1, C_in, 1, 1) buffer (registered in __init__, not saved)

    def __init__(
        self,
        arch: str = "deeplabv3plus",
        encoder: str = DEFAULT_ENCODER,
        num_classes: int = 2,
        in_channels: int = 3,
        proj_dim: int = 256,
        proj_layers: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
        check_encoder_name(encoder)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.net = smp_network(arch, encoder, in_channels, num_classes, encoder_weights)
        self.arch, self.encoder_name, self.in_channels = arch, encoder, in_channels
        self.projection = ProjectionHead(self.decoder_channels, out_channels=proj_dim, num_layers=proj_layers)
        # smp's divisibility rule: the encoder's output stride, and 2 ** depth for the decoder's skips
        self.stride = max(
            int(getattr(self.net.encoder, "output_stride", 32)), 2 ** len(self.net.encoder.out_channels[1:])
        )
        mean = mean if mean is not None else (IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels)
        std = std if std is not None else (IMAGENET_STD if in_channels == 3 else (0.25,) * in_channels)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"mean and std need {in_channels} values (in_channels), got {len(mean)} and {len(std)}"
            )
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    @property
    def num_classes(self) -> int:
        """Output classes C (of the active domain's head in a multi-domain network)."""
        return int(self.net.segmentation_head[0].out_channels)

    @property
    def decoder_channels(self) -> int:
        """Channels C_dec of the decoder features both heads read."""
        return int(self.net.segmentation_head[0].in_channels)

    @property
    def encoder_channels(self) -> int:
        """Channels of the encoder's coarsest (bottleneck) features."""
        return int(self.net.encoder.out_channels[-1])

    def _decode(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """x (B, C_in, H, W) in [0, 1] -> decoder features (B, C_dec, h', w') of the padded input."""
        features, size = self._encode(x)
        return self.net.decoder(features), size

    def _encode(self, x: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        """x (B, C_in, H, W) in [0, 1] -> encoder features of the normalised, padded input
        (coarsest last), and the input size (H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = (x - self.mean) / self.std
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            x = F.pad(
                x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w) else "constant"
            )
        return self.net.encoder(x), (h, w)

    def _project(self, decoded: Tensor, size: tuple[int, int]) -> Tensor:
        padded_h = size[0] + (-size[0]) % self.stride
        scale = padded_h / decoded.shape[-2]  # input pixels per feature pixel (4 for DeepLabV3+)
        h, w = math.ceil(size[0] / scale), math.ceil(size[1] / scale)
        return self.projection(decoded)[..., :h, :w]  # (B, D, h, w)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Encoder and decoder features, for objectives that need more than the two heads.

        x (B, C_in, H, W) with H, W multiples of :attr:`stride` (training crops are) ->
        (encoder features, coarsest last: [..., (B, 512, H/32, W/32)] for ResNet-18;
        decoder features (B, C_dec, H/4, W/4) for DeepLabV3+).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(
                f"features() needs H and W divisible by {self.stride}, got {tuple(x.shape[-2:])}"
            )
        encoded = self.net.encoder((x - self.mean) / self.std)
        return list(encoded), self.net.decoder(encoded)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) in [0, 1] -> logits (B, C, H, W)."""
        decoded, (h, w) = self._decode(x)
        return self.net.segmentation_head(decoded)[..., :h, :w]

    def head_inputs(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> decoder features upsampled as the segmentation head upsamples its
        logits, (B, C_dec, H, W). A 1x1 head conv on them equals :meth:`forward` (bilinear
        upsampling commutes with a per-pixel affine map); see :mod:`pixcon.models.prototype_head`."""
        decoded, (h, w) = self._decode(x)
        return self.net.segmentation_head[1](decoded)[..., :h, :w]

    def project(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> L2-normalised pixel embeddings (B, D, h, w) from the decoder."""
        decoded, size = self._decode(x)
        return self._project(decoded, size)

    def decoder_cells(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> decoder features (B, C_dec, h, w) on the cell grid of
        :meth:`project` (padding cells cropped): the input of the projection head."""
        decoded, size = self._decode(x)
        padded_h = size[0] + (-size[0]) % self.stride
        scale = padded_h / decoded.shape[-2]
        return decoded[..., : math.ceil(size[0] / scale), : math.ceil(size[1] / scale)]

    def project_rows(self, rows: Tensor) -> Tensor:
        """The projection head on feature vectors: rows (M, C_dec) -> L2-normalised (M, D).

        With :meth:`decoder_cells`, the head runs on sampled pixels only. Its BN (2-3 layers) then
        takes the statistics of those pixels, not of every pixel of the map.
        """
        return self.projection(rows[:, :, None, None])[:, :, 0, 0]

    def forward_both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One pass, both outputs: logits (B, C, H, W) and embeddings (B, D, h, w)."""
        decoded, (h, w) = self._decode(x)
        return self.net.segmentation_head(decoded)[..., :h, :w], self._project(decoded, (h, w))


def load_encoder_weights(model: Segmenter, path: str | Path) -> None:
    """Load a local state dict into the encoder (nothing is downloaded).

    Accepts a plain state dict (e.g. torchvision's ``resnet18`` weights saved with ``torch.save``)
    or a dict with a ``state_dict``/``model`` entry; ``module.`` and ``encoder.`` prefixes are
    stripped and classifier keys (``fc.*``) ignored. For ``tu-`` encoders a plain timm state dict
    of that model works as it is.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no tensor that matches the encoder, or shapes disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights not found: {path}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read encoder weights {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    cleaned = {}
    for k, v in state.items():
        for prefix in ("module.", "net.encoder.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        cleaned[k] = v
    target = model.net.encoder.state_dict()
    # smp's timm universal encoders ("tu-...") keep the timm model under "model.": a plain timm
    # state dict (conv1.weight) fits them with that prefix added
    cleaned = {
        (f"model.{k}" if k not in target and f"model.{k}" in target else k): v for k, v in cleaned.items()
    }
    matched = {k: v for k, v in cleaned.items() if k in target}
    for k, v in matched.items():
        if _is_first_conv(v, target[k], model.in_channels):
            matched[k] = adapt_first_conv(v, model.in_channels)
            log.info(
                "encoder weights %s: adapted %s from %d to %d input bands",
                path,
                k,
                v.shape[1],
                model.in_channels,
            )
    if not matched:
        raise ValueError(
            f"{path}: no key matches encoder {model.encoder_name!r} (e.g. {next(iter(target))!r})"
        )
    bad = [k for k, v in matched.items() if v.shape != target[k].shape]
    if bad:
        raise ValueError(
            f"{path}: shape mismatch for {bad[:5]} (expected e.g. {tuple(target[bad[0]].shape)})"
        )
    missing = sorted(set(target) - set(matched))
    model.net.encoder.load_state_dict(matched, strict=False)
    log.info("loaded %d encoder tensors from %s (%d missing)", len(matched), path, len(missing))
    if missing:
        log.warning("encoder weights %s lack %d tensors, e.g. %s", path, len(missing), missing[:3])


def _is_first_conv(source: Tensor, target: Tensor, in_channels: int) -> bool:
    return (
        source.dim() == 4
        and target.dim() == 4
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
        and source.shape[1] != in_channels
        and target.shape[1] == in_channels
    )


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-convolution weight (O, C, k, k) for ``in_channels`` bands instead of C.

    The rule of smp's ``patch_first_conv``: one band sums the C filters (a grey image then gets the
    response it had as RGB); more bands cycle through them (band i takes filter i mod C), scaled
    by C / in_channels to keep the response's magnitude. E.g. RGB weights for RGBIR: IR reuses R's
    filter, all scaled by 3/4.
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    c = weight.shape[1]
    index = torch.arange(in_channels) % c
    return weight[:, index] * (c / in_channels)


class EncoderWeightsError(ConfigError):
    """``model.encoder_weights`` names weights that cannot be had: neither a file nor a name smp
    knows for the encoder, or smp's weights are neither cached nor downloadable (exit status 2)."""


LOCAL_ALTERNATIVE = "model.encoder_weights=/path/to/encoder_state_dict.pth"


def _timm_alias(encoder: str) -> bool:
    """Whether smp builds ``encoder`` as a timm universal encoder (``tu-...`` or an equivalent
    deprecated ``timm-...`` alias): its weights are timm's pretrained ones (``encoder_weights=True``)."""
    return encoder.startswith("tu-") or is_equivalent_to_timm_universal(encoder)


def smp_weight_names(encoder: str) -> list[str]:
    """The names of pretrained weights smp can load for ``encoder`` (``[]`` for none).

    smp's own encoders list theirs in ``smp.encoders.encoders[encoder]["pretrained_settings"]``
    (``resnet50``: ``imagenet``, ``ssl``, ``swsl``). A ``tu-<timm model>`` encoder has timm's
    pretrained weights of that model (its default tag, or the ``.tag`` in the name), which pixcon
    calls ``imagenet``.
    """
    if _timm_alias(encoder):
        model = encoder[3:] if encoder.startswith("tu-") else encoder
        return ["imagenet"] if encoder.startswith("timm-") or timm.models.is_model_pretrained(model) else []
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    return sorted(settings)


def encoder_weights_source(encoder: str, weights: str | Path | None) -> str | None:
    """Where ``model.encoder_weights`` comes from: None (random weights), ``"file"`` (a local
    state dict, :func:`load_encoder_weights`) or ``"smp"`` (a weights name smp loads itself).

    Raises:
        EncoderWeightsError: ``weights`` is neither an existing file nor a name smp knows for
            ``encoder`` (the message lists the names it knows).
    """
    if weights is None or str(weights) == "":
        return None
    if Path(weights).is_file():
        return "file"
    if str(weights) in smp_weight_names(encoder):
        return "smp"
    raise _unknown_weights(encoder, str(weights))


def _unknown_weights(encoder: str, weights: str) -> EncoderWeightsError:
    names = smp_weight_names(encoder)
    known = f"the names smp knows for it: {', '.join(names)}" if names else "smp has no weights for it"
    return EncoderWeightsError(
        f"model.encoder_weights={weights!r}: no such file, and not a name of pretrained weights "
        f"for encoder {encoder!r} ({known}); give a weights name or a local file: {LOCAL_ALTERNATIVE}"
    )


def uses_pretrained_encoder(cfg: RunConfig | ModelConfig) -> bool:
    """Whether a run's encoder starts from pretrained weights (``model.encoder_weights`` set: a
    weights name smp loads, or a local state dict), e.g. to mark such runs in a results table."""
    model = cfg.model if isinstance(cfg, RunConfig) else cfg
    return bool(model.encoder_weights)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether smp's weights server (the Hugging Face Hub) can be reached: a TCP connection to its
    host opens (nothing is sent). False in Hugging Face's offline mode (``HF_HUB_OFFLINE=1``);
    True behind a proxy (the download then decides)."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    if urllib.request.getproxies():
        return True
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """While open and ``offline``, huggingface_hub reads its local cache only (its own offline
    switch, as ``HF_HUB_OFFLINE=1`` sets it): without a network a missing file is reported at
    once instead of after its retries with back-off (about 30 s)."""
    if not offline:
        yield
        return
    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def smp_network(
    arch: str, encoder: str, in_channels: int, num_classes: int, encoder_weights: str | None = None
) -> Any:
    """smp's model ``arch`` with ``encoder``; ``encoder_weights`` (a name of
    :func:`smp_weight_names`) is passed to smp's constructor, so smp loads them its own way: from
    the local Hugging Face or torch cache if they are there, else downloaded. pixcon downloads
    nothing itself.

    Raises:
        EncoderWeightsError: An unknown weights name, or weights that are not cached and could not
            be downloaded (one line naming the value and the local-file alternative). Without a
            network this is reported at once.
    """
    weights: str | bool | None = None
    if encoder_weights is not None:
        if encoder_weights not in smp_weight_names(encoder):
            raise _unknown_weights(encoder, encoder_weights)
        weights = True if _timm_alias(encoder) else encoder_weights
    build = getattr(smp, ARCHITECTURES[arch])
    if weights is None:
        return build(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    online = _hub_reachable()
    try:
        with _hub_offline(not online):
            net = build(
                encoder_name=encoder, encoder_weights=weights, in_channels=in_channels, classes=num_classes
            )
    except OSError as err:  # URLError, ConnectionError, huggingface_hub's LocalEntryNotFoundError, ...
        why = "no network: the weights server cannot be reached" if not online else _first_line(err)
        raise EncoderWeightsError(
            f"model.encoder_weights={encoder_weights!r}: smp's {encoder_weights!r} weights for encoder "
            f"{encoder!r} are not in the local cache and nothing could be downloaded ({why}); give a "
            f"local file instead: {LOCAL_ALTERNATIVE}"
        ) from None
    log.info("encoder %s: smp's %r weights loaded", encoder, encoder_weights)
    return net


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def create_segmenter(encoder_weights: str | Path | None = None, **kwargs: Any) -> Segmenter:
    """Build a :class:`Segmenter`. ``encoder_weights``: None (random weights), a local state-dict
    path (:func:`load_encoder_weights`), or a name of weights smp has for the encoder (``imagenet``;
    loaded by smp from its cache or downloaded, see :func:`smp_network`).

    Raises:
        EncoderWeightsError: ``encoder_weights`` is neither a file nor a weights name smp knows for
            the encoder, or smp's weights cannot be had (nothing cached, nothing downloadable).
    """
    source = encoder_weights_source(kwargs.get("encoder", DEFAULT_ENCODER), encoder_weights)
    if source == "smp":
        return Segmenter(**kwargs, encoder_weights=str(encoder_weights))
    model = Segmenter(**kwargs)
    if source == "file":
        assert encoder_weights is not None
        load_encoder_weights(model, encoder_weights)
    return model


def segmenter_from_config(
    cfg: ModelConfig, num_classes: int, in_channels: int | None = None, pretrained: bool = True
) -> Segmenter:
    """The :class:`Segmenter` of a ``model`` config section for data of ``num_classes`` classes and
    ``in_channels`` bands (``model.in_channels``, if set, must agree with them).

    ``pretrained=False`` skips ``model.encoder_weights``: for a network whose weights come from a
    checkpoint next (the weights file need not exist any more).
    """
    channels = cfg.in_channels or in_channels or 3
    if cfg.in_channels is not None and in_channels is not None and cfg.in_channels != in_channels:
        raise ValueError(
            f"model.in_channels={cfg.in_channels} but the images have {in_channels} bands "
            "(set model.in_channels to null to follow the data)"
        )
    return create_segmenter(
        arch=cfg.arch,
        encoder=cfg.encoder,
        num_classes=num_classes,
        in_channels=channels,
        proj_dim=cfg.proj_dim,
        proj_layers=cfg.proj_layers,
        encoder_weights=cfg.encoder_weights if pretrained else None,
    )
