"""Model contract: shapes at 64x64 and odd sizes, backward, unit-norm embeddings, weight loading."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixcon.config import load_config
from pixcon.models import ARCHITECTURES, create_segmenter, load_encoder_weights
from pixcon.models.segmenter import (
    EncoderWeightsError,
    encoder_weights_source,
    smp_weight_names,
    uses_pretrained_encoder,
)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [(64, 64), (67, 45)])
def test_deeplab_forward_backward(encoder: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_segmenter(arch="deeplabv3plus", encoder=encoder, num_classes=5, proj_dim=32)
    x = torch.rand(2, 3, *size)
    logits, proj = model.forward_both(x)
    assert logits.shape == (2, 5, *size)
    assert proj.shape == (2, 32, -(-size[0] // 4), -(-size[1] // 4))
    torch.testing.assert_close(proj.norm(dim=1), torch.ones(2, *proj.shape[-2:]))
    (logits.logsumexp(1).mean() + proj.mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()  # the ASPP has dropout: compare the two entry points deterministically
    torch.testing.assert_close(model(x), model.forward_both(x)[0])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture(arch: str) -> None:
    model = create_segmenter(arch=arch, encoder="resnet18", num_classes=3, proj_dim=8, proj_layers=1)
    logits, proj = model.forward_both(torch.rand(2, 3, 40, 72))
    assert logits.shape == (2, 3, 40, 72) and proj.shape[:2] == (2, 8)
    assert torch.isfinite(logits).all()


def test_four_band_input() -> None:
    model = create_segmenter(num_classes=6, in_channels=4)
    assert model(torch.rand(2, 4, 64, 64)).shape == (2, 6, 64, 64)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.rand(2, 3, 64, 64))


def test_bad_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'segformer2'.*deeplabv3plus"):
        create_segmenter(arch="segformer2")
    with pytest.raises(ValueError, match="unknown encoder 'resnet19'"):
        create_segmenter(encoder="resnet19")
    with pytest.raises(ValueError, match="num_layers"):
        create_segmenter(proj_layers=4)


def test_encoder_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_segmenter(num_classes=3)
    path = tmp_path / "enc.pt"
    # torchvision-style keys: a plain ResNet state dict with a classifier that must be ignored
    state = {f"module.{k}": v for k, v in source.net.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save({"state_dict": state}, path)
    torch.manual_seed(2)
    target = create_segmenter(num_classes=3, encoder_weights=path)
    for k, v in source.net.encoder.state_dict().items():
        torch.testing.assert_close(target.net.encoder.state_dict()[k], v)


def test_encoder_weights_errors_name_the_file(tmp_path: Path) -> None:
    model = create_segmenter(num_classes=3)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder_weights(model, tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_encoder_weights(model, junk)
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no key matches"):
        load_encoder_weights(model, other)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 1, 1)}, wrong)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_encoder_weights(model, wrong)


@pytest.mark.parametrize("bands", [1, 4])
def test_rgb_encoder_weights_adapted_to_other_band_counts(tmp_path: Path, bands: int) -> None:
    torch.manual_seed(0)
    rgb = create_segmenter(encoder="resnet18", num_classes=3)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.net.encoder.state_dict(), path)
    model = create_segmenter(encoder="resnet18", num_classes=3, in_channels=bands, encoder_weights=path)
    w3, w = rgb.net.encoder.conv1.weight, model.net.encoder.conv1.weight  # (64, 3, 7, 7), (64, bands, 7, 7)
    assert w.shape == (64, bands, 7, 7)
    if bands == 4:  # bands cycle through R, G, B, R, ... scaled by 3 / bands
        torch.testing.assert_close(w, torch.cat([w3, w3[:, :1]], dim=1) * 0.75)
    else:  # one band sums the filters: a grey image gets the response it had as RGB
        torch.testing.assert_close(w[:, 0], w3.sum(1))
        torch.testing.assert_close(
            model.net.encoder.conv1(torch.full((1, 1, 16, 16), 0.3)),
            rgb.net.encoder.conv1(torch.full((1, 3, 16, 16), 0.3)),
            rtol=1e-5,
            atol=1e-5,
        )
    torch.testing.assert_close(
        model.net.encoder.layer1[0].conv1.weight, rgb.net.encoder.layer1[0].conv1.weight
    )


@pytest.mark.filterwarnings("ignore:`timm-` encoders are deprecated")
@pytest.mark.parametrize("encoder", ["tu-resnet10t", "timm-mobilenetv3_small_100"])
def test_timm_universal_encoders(encoder: str) -> None:
    # smp builds any timm model as "tu-<name>" (and maps its deprecated "timm-*" aliases onto them)
    model = create_segmenter(encoder=encoder, num_classes=3, proj_dim=8, proj_layers=1)
    logits, proj = model.forward_both(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and proj.shape == (2, 8, 16, 16)
    assert type(model.net.encoder).__name__ == "TimmUniversalEncoder"


def test_unknown_timm_encoder_names_timm() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'tu-resnet10x': timm has no model 'resnet10x'"):
        create_segmenter(encoder="tu-resnet10x")
    with pytest.raises(ValueError, match="unknown encoder 'timm-notamodel'.*tu-<timm model name>"):
        create_segmenter(encoder="timm-notamodel")


def test_encoder_weights_plain_timm_state_dict(tmp_path: Path) -> None:
    # a timm model's own state dict (no "model." prefix, with its classifier) loads into "tu-" encoders
    import timm

    torch.manual_seed(3)
    source = timm.create_model("resnet10t", num_classes=5)
    path = tmp_path / "resnet10t.pt"
    torch.save(source.state_dict(), path)
    target = create_segmenter(encoder="tu-resnet10t", num_classes=3, encoder_weights=path)
    loaded = target.net.encoder.model.state_dict()
    for k, v in source.state_dict().items():
        if k in loaded:
            torch.testing.assert_close(loaded[k], v)
    assert "fc.weight" not in loaded and any(k.startswith("conv1") for k in loaded)


def test_unknown_encoder_weights_name_lists_smps_names(tmp_path: Path) -> None:
    with pytest.raises(EncoderWeightsError) as err:
        create_segmenter(encoder="resnet50", num_classes=3, encoder_weights="imagenett")
    message = str(err.value)
    assert "model.encoder_weights='imagenett': no such file" in message
    assert "encoder 'resnet50' (the names smp knows for it: imagenet, ssl, swsl)" in message
    assert "model.encoder_weights=/path/to/encoder_state_dict.pth" in message and "\n" not in message
    with pytest.raises(EncoderWeightsError, match=r"missing\.pth': no such file.*imagenet, ssl, swsl\)"):
        create_segmenter(num_classes=3, encoder_weights=str(tmp_path / "missing.pth"))
    assert smp_weight_names("tu-resnet10t") == ["imagenet"]  # timm's pretrained weights of the model
    assert encoder_weights_source("resnet18", None) is None
    assert encoder_weights_source("resnet18", "imagenet") == "smp"


def test_uses_pretrained_encoder(tmp_path: Path) -> None:
    assert not uses_pretrained_encoder(load_config())
    assert uses_pretrained_encoder(load_config(overrides=["model.encoder_weights=imagenet"]))
    assert uses_pretrained_encoder(
        load_config(overrides=[f"model.encoder_weights={tmp_path / 'e.pth'}"]).model
    )


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Hugging Face Hub that cannot be reached (an unresolvable host, even on a machine with a
    network) and an empty cache: what smp meets on a machine without a network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_imagenet_weights_offline_fail_at_once_naming_the_local_alternative(no_hub: Path) -> None:
    tic = time.perf_counter()
    with pytest.raises(EncoderWeightsError) as err:
        create_segmenter(num_classes=3, encoder_weights="imagenet")
    assert time.perf_counter() - tic < 5  # no retries with back-off (about 30 s)
    assert str(err.value) == (
        "model.encoder_weights='imagenet': smp's 'imagenet' weights for encoder 'resnet18' are not in the "
        "local cache and nothing could be downloaded (no network: the weights server cannot be reached); "
        "give a local file instead: model.encoder_weights=/path/to/encoder_state_dict.pth"
    )


def test_imagenet_weights_in_the_local_cache_are_loaded_by_smp_offline(no_hub: Path) -> None:
    """Weights already in the Hugging Face cache (as smp's download leaves them) load without a
    network: smp reads them itself (here a stand-in file with known values)."""
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = (
        no_hub / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    )
    snapshot.mkdir(parents=True)
    torch.manual_seed(5)
    source = create_segmenter(num_classes=3).net.encoder.state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(6)
    model = create_segmenter(num_classes=3, encoder_weights="imagenet")
    for k, v in source.items():
        torch.testing.assert_close(model.net.encoder.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_cli_imagenet_weights_offline_is_one_line(
    tiny_dataset: Path, tmp_path: Path, no_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixcon.cli import main

    argv = ["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "run"), "--steps", "1"]
    tic = time.perf_counter()
    assert main([*argv, "--set", "model.encoder_weights=imagenet", "--quiet"]) == 2
    assert time.perf_counter() - tic < 8
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pixcon train: error: model.encoder_weights='imagenet': smp's 'imagenet'")
    assert lines[0].endswith(
        "give a local file instead: model.encoder_weights=/path/to/encoder_state_dict.pth"
    )
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_cli_imagenet_weights_offline_is_one_line_in_seconds(tiny_dataset: Path, tmp_path: Path) -> None:
    """The same through a real `pixcon train` process (about 10 s on a 2-core CPU, mostly startup)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_ENDPOINT": "https://hub.invalid",  # unreachable even on a machine with a network
        "HF_HUB_CACHE": str(tmp_path / "hf"),
    }
    argv = ["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "run"), "--steps", "1"]
    argv += ["--set", "model.encoder_weights=imagenet", "--quiet"]
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pixcon.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.perf_counter() - tic
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pixcon train: error: model.encoder_weights='imagenet': ")
    assert "nothing could be downloaded" in lines[0]
    assert "model.encoder_weights=/path/to/encoder_state_dict.pth" in lines[0]
    assert elapsed < 25, elapsed  # startup and data checks; smp's retries alone took about 30 s
