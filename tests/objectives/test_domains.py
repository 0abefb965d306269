"""Several domains in one run: the step loss against the paper's equation, and domain routing.

Boutillon et al. (MICCAI 2021): L = sum_d CE_d + lambda * L_con, with L_con the supervised
contrastive loss (Khosla et al., L_out) whose labels are the domains; in pixcon the CE is the run's
objective on each domain (``ce`` here) and L_con a term of any objective. The references below are
written from those equations in float64 numpy, independently of pixcon's losses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from pixcon.config import load_config
from pixcon.models import Segmenter, create_segmenter, to_multidomain, use_domain
from pixcon.models.domain_bn import domain_batchnorms
from pixcon.objectives import DataInfo, DomainObjectives, create_objectives
from pixcon.train.trainee import Trainee


def _reference_ce(logits: np.ndarray, target: np.ndarray, ignore: int) -> float:
    """-1/N sum_i log(exp(l_{i, y_i}) / sum_k exp(l_{i, k})) over the N pixels not ignored."""
    scores = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])  # (B*H*W, K)
    y = target.reshape(-1)
    terms = []
    for s, label in zip(scores, y, strict=True):
        if label == ignore:
            continue
        terms.append(-(s[label] - np.log(np.exp(s).sum())))
    return float(np.mean(terms))


def _reference_supcon(z: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """Khosla et al., Eq. 2 (L_out), as loops; anchors without a positive are left out."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    per_anchor = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            denom = sum(np.exp(z[i] @ z[a] / tau) for a in others)
            per_anchor.append(-np.mean([np.log(np.exp(z[i] @ z[p] / tau) / denom) for p in pos]))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def _model() -> Segmenter:
    torch.manual_seed(0)
    return to_multidomain(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 4]).train()


def _batch(sizes: tuple[int, int] = (2, 3)) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    first = (
        torch.rand(sizes[0], 3, 32, 32, generator=g),
        torch.randint(0, 3, (sizes[0], 32, 32), generator=g),
    )
    # domain 1 ignores label 0 (its classes are 1..3): another ignore value than the primary's 255
    second = (
        torch.rand(sizes[1], 3, 32, 32, generator=g),
        torch.randint(0, 4, (sizes[1], 32, 32), generator=g),
    )
    first[1][0, :5] = 255
    return [first, second]


INFOS = (DataInfo(3, 255, 3), DataInfo(4, 0, 3))


def _objective(
    model: Segmenter, level: str, positives: str = "domain", weight: float = 0.3, tau: float = 0.5
) -> DomainObjectives:
    cfg = load_config(
        overrides=[
            f"multidomain.level={level}",
            f"multidomain.positives={positives}",
            f"multidomain.weight={weight}",
            f"multidomain.temperature={tau}",
            "multidomain.image_proj_dim=8",
        ]
    )
    return create_objectives("ce", cfg, model, INFOS, ["a", "b"])


@pytest.mark.parametrize(
    "level, positives", [("image", "domain"), ("pixel", "domain"), ("pixel", "domain_class")]
)
def test_step_loss_equals_sum_of_domain_ce_plus_lambda_regulariser(level: str, positives: str) -> None:
    weight, tau = 0.3, 0.5
    model = _model()
    objective = _objective(model, level, positives, weight, tau)
    batch = _batch()
    torch.manual_seed(7)  # the decoder's dropout
    terms = objective(model, batch)
    assert set(terms) == {"ce_a", "ce_b", "domain"}

    # The same network outputs again (train-mode BN normalises with the batch statistics, and the
    # dropout masks are drawn again from the same seed in the same order), then the reference
    # from the equations.
    ce, embeddings, labels, domains = [], [], [], []
    bottleneck: list[Tensor] = []
    hook = model.net.encoder.register_forward_hook(lambda _m, _i, out: bottleneck.append(out[-1]))
    torch.manual_seed(7)
    with torch.no_grad():
        for d, (x, y) in enumerate(batch):
            if level == "image":
                with use_domain(model, d):
                    logits = model(x)  # (B, K, H, W)
                # the paper's image embedding: bottleneck -> spatial mean -> MLP -> unit norm
                mlp = objective.regulariser.image_projection
                emb = torch.nn.functional.normalize(mlp(bottleneck[-1].mean(dim=(-2, -1))), dim=1)  # (B, D)
                embeddings.append(emb.double().numpy())
                domains += [d] * len(x)
            else:
                with use_domain(model, d):
                    logits, emb = model.forward_both(x)  # (B, K, H, W), (B, D, 8, 8)
                y_small = y[:, ::4, ::4]  # nearest at stride 4 for a 32 -> 8 map
                keep = (y_small != INFOS[d].ignore_index).reshape(-1).numpy()
                z = emb.double().permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).numpy()[keep]
                embeddings.append(z)
                labels += [(d, int(c)) for c in y_small.reshape(-1).numpy()[keep]]
                domains += [d] * int(keep.sum())
            ce.append(_reference_ce(logits.double().numpy(), y.numpy(), INFOS[d].ignore_index))
    hook.remove()
    z = np.concatenate(embeddings)
    codes = np.array([d * 1000 + c for d, c in labels] if positives == "domain_class" else domains)
    reg = _reference_supcon(z, codes, tau)
    assert terms["ce_a"].item() == pytest.approx(ce[0], rel=1e-5)
    assert terms["ce_b"].item() == pytest.approx(ce[1], rel=1e-5)
    assert terms["domain"].item() == pytest.approx(weight * reg, rel=1e-5)
    assert sum(terms.values()).item() == pytest.approx(ce[0] + ce[1] + weight * reg, rel=1e-5)


def test_each_domain_batch_goes_through_its_own_batch_norm_and_head() -> None:
    model = _model()
    objective = _objective(model, "image")
    heads = model.net.segmentation_head.heads
    seen: dict[str, set[int]] = {}

    def record(name: str) -> Callable[..., None]:
        return lambda _m, inputs, _o: seen.setdefault(name, set()).add(inputs[0].shape[0])

    for i, dbn in enumerate(domain_batchnorms(model)):
        for d in range(2):
            dbn.bns[d].register_forward_hook(record(f"bn{i}.{d}"))
    for d in range(2):
        heads[d].register_forward_hook(record(f"head{d}"))
    objective(model, _batch(sizes=(2, 3)))  # domain 0: 2 images, domain 1: 3
    assert seen["head0"] == {2} and seen["head1"] == {3}
    bn_sizes = {name: sizes for name, sizes in seen.items() if name.startswith("bn")}
    assert bn_sizes, "no domain BN ran"
    for name, sizes in bn_sizes.items():
        # the ASPP pooling branch sees one pooled vector per image: still the domain's own batch
        assert sizes == ({2} if name.endswith(".0") else {3}), (name, sizes)

    model.zero_grad(set_to_none=True)
    terms = objective(model, _batch())
    terms["ce_b"].backward()  # domain 1's CE reaches neither domain 0's head nor its BN copies
    assert all(p.grad is None for p in heads[0].parameters())
    assert all(m.bns[0].weight.grad is None for m in domain_batchnorms(model))
    assert all(p.grad is not None for p in heads[1].parameters())


def test_heads_the_objective_trains() -> None:
    model = _model()
    image, pixel = _objective(model, "image"), _objective(_model(), "pixel")
    assert image.regulariser is not None and image.regulariser.image_projection is not None
    assert (image.uses_segmentation_head, image.uses_projection_head) == (True, False)
    assert (pixel.uses_segmentation_head, pixel.uses_projection_head) == (True, True)
    off = _objective(_model(), "image", weight=0.0)
    assert (off.uses_projection_head, off.regulariser) == (False, None)
    assert set(off(_model(), _batch())) == {"ce_a", "ce_b"}
    single = create_objectives("ce", load_config(), create_segmenter(num_classes=3), INFOS[:1], ["a"])
    assert single.regulariser is None  # one domain: nothing to contrast, and terms keep their names
    assert set(single(create_segmenter(num_classes=3).train(), _batch()[:1])) == {"ce"}


def test_contrastive_pretraining_over_two_domains_has_every_term() -> None:
    model = _model()
    cfg = load_config(
        overrides=["multidomain.level=pixel", "loss.max_pixels=64", "multidomain.max_pixels=64"]
    )
    objective = create_objectives("contrast", cfg, model, INFOS, ["a", "b"])
    terms = objective(model, _batch())
    assert set(terms) == {"contrast_a", "contrast_b", "domain"}
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.projection.net[0].weight.grad is not None


def test_batch_must_have_one_entry_per_domain() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"one batch per domain \(2\), got 1"):
        _objective(model, "image")(model, _batch()[:1])


def test_losses_are_float32_under_bf16_autocast() -> None:
    model = _model()
    objective = _objective(model, "image")

    def bf16() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    with bf16():
        terms = Trainee(model, objective, autocast=bf16)(_batch())
    assert {v.dtype for v in terms.values()} == {torch.float32}
    assert all(torch.isfinite(v) for v in terms.values())
