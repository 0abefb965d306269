"""Model contract: shapes at 64x64 and odd sizes, backward, unit-norm embeddings, weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcon.models import ARCHITECTURES, create_segmenter, load_encoder_weights


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
