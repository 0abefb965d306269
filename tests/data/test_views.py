"""Two-view geometry: crops and flips on known boxes, correspondences, and the content they match."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from pixcon.data.views import (
    CELL_OFFSET,
    TwoViews,
    ViewParams,
    apply_view,
    color_jitter,
    correspondence,
    grid_to_source,
    map_boxes,
    overlap_fraction,
    sample_view,
    source_to_view,
    view_to_source,
)


def geom(top: float, left: float, height: float, width: float, flip: bool = False) -> torch.Tensor:
    """One (1, 5) geometry row."""
    return torch.tensor([[top, left, height, width, float(flip)]])


def expected(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows).flatten()[None]  # (1, h*w)


# ----------------------------------------------------------------------------- correspondences
# Cell a of a stride-s grid is centred on view coordinate s * a + offset (CELL_OFFSET = 0.5).


@pytest.mark.parametrize("offset", [CELL_OFFSET, 0.0, 2.0, 3.9])
def test_identical_views_give_identity(offset: float) -> None:
    g = geom(3, 5, 40, 48)
    assert torch.equal(correspondence(g, g, (4, 6), (32, 48), offset), torch.arange(24)[None])
    flipped = geom(3, 5, 40, 48, flip=True)  # flipped twice: identity as well
    assert torch.equal(correspondence(flipped, flipped, (4, 6), (32, 48), offset), torch.arange(24)[None])


@pytest.mark.parametrize(
    "offset, columns",
    [
        # Cell b's centre 4b + 0.5 mirrors to 16 - 4b - 0.5 = 4(4 - b) - 0.5: 1 px before cell
        # (4 - b)'s centre, 3 px after cell (3 - b)'s. So b -> 4 - b, and cell 0 (at 15.5, 3 px
        # past the last centre 12.5) has no partner.
        (0.5, [-1, 3, 2, 1]),
        # Offset 0: 16 - 4b = cell (4 - b)'s centre exactly; b = 0 mirrors to 16, outside the view.
        (0.0, [-1, 3, 2, 1]),
        # Offset s / 2 (block centres 4b + 2, symmetric): the textbook mirror b -> 3 - b.
        (2.0, [3, 2, 1, 0]),
    ],
)
def test_flip_gives_mirrored_indices(offset: float, columns: list[int]) -> None:
    g1, g2 = geom(0, 0, 32, 32), geom(0, 0, 32, 32, flip=True)  # views of 16 px, grid 4 x 4 (s = 4)
    corr = correspondence(g1, g2, (4, 4), 16, offset)
    rows = [[-1 if c < 0 else 4 * a + c for c in columns] for a in range(4)]
    assert torch.equal(corr, expected(rows))
    assert torch.equal(correspondence(g2, g1, (4, 4), 16, offset), expected(rows))  # and back
    # Every matched pair is the nearest centre: 1 px apart (offset 0.5), 0 px (offsets 0 and 2).
    p1 = grid_to_source(g1, 4, 16, offset).reshape(16, 2)
    p2 = grid_to_source(g2, 4, 16, offset).reshape(16, 2)
    ok = corr[0] >= 0
    gap = (p1[ok] - p2[corr[0][ok]]).abs().amax()  # source px (2 source px per view px)
    assert float(gap) == (2.0 if offset == 0.5 else 0.0)


def test_half_overlap_exact_indices() -> None:
    # Views of 16 px (4 source px each), grid 4 x 4, s = 4. View 2 starts half a crop (8 view px)
    # to the right: view-1 centre 4b + 0.5 is view-2 coordinate 4(b - 2) + 0.5, exactly cell b - 2.
    corr = correspondence(geom(0, 0, 64, 64), geom(0, 32, 64, 64), (4, 4), 16)
    assert torch.equal(corr, expected([[-1, -1, 4 * a, 4 * a + 1] for a in range(4)]))
    # View 2 flipped: view-2 coordinate 16 - (4(b - 2) + 0.5) = 23.5 - 4b, i.e. 15.5 for b = 2
    # (inside view 2 but 3 px past its last centre 12.5: none) and 11.5 for b = 3 (cell 3, 1 px).
    corr = correspondence(geom(0, 0, 64, 64), geom(0, 32, 64, 64, True), (4, 4), 16)
    assert torch.equal(corr, expected([[-1, -1, -1, 4 * a + 3] for a in range(4)]))
    # The reverse: view-2 (flipped) column b is centred on view-2 4b + 0.5, source 32 + 4(16 - 4b
    # - 0.5) = 94 - 16b, view-1 coordinate 23.5 - 4b: outside for b <= 1, 15.5 (none), 11.5 (cell 3).
    corr = correspondence(geom(0, 32, 64, 64, True), geom(0, 0, 64, 64), (4, 4), 16)
    assert torch.equal(corr, expected([[-1, -1, -1, 4 * a + 3] for a in range(4)]))


def test_zoomed_view_exact_indices() -> None:
    # View 1: 16 px over 64 source px (4 source px per view px), centres 4a + 0.5 -> source 2, 18,
    # 34, 50. View 2: 16 px over 40 source px from 2 -> view-2 coordinates 0, 6.4, 12.8, 19.2,
    # whose nearest centres (0.5, 4.5, 8.5, 12.5) are cells 0, 1, 3 and none (outside the view).
    corr = correspondence(geom(0, 0, 64, 64), geom(2, 2, 40, 40), (4, 4), 16)
    col = [0, 1, 3, -1]
    rows = [[-1 if r < 0 or c < 0 else 4 * r + c for c in col] for r in col]
    assert torch.equal(corr, expected(rows))


def test_disjoint_views_have_no_correspondence() -> None:
    corr = correspondence(geom(0, 0, 20, 20), geom(30, 30, 20, 20), (5, 5), 20)
    assert bool((corr == -1).all())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("offset", [CELL_OFFSET, 2.0])
def test_correspondence_is_the_nearest_centre(seed: int, offset: float) -> None:
    # Brute force over random crops and flips: a view-1 centre's match is the view-2 cell whose
    # half-open region [s * b + offset - s / 2, s * b + offset + s / 2) holds its view-2 point q
    # along both axes, if any and if q is inside view 2; that cell's centre is a nearest one.
    g = torch.Generator().manual_seed(seed)
    b, h, w, size = 3, 5, 7, (20, 28)  # stride 4
    views = [sample_view(60, 70, 20, scale=(0.2, 1.0), generator=g) for _ in range(2 * b)]
    g1 = torch.stack([v.to_tensor() for v in views[:b]]).double()
    g2 = torch.stack([v.to_tensor() for v in views[b:]]).double()
    corr = correspondence(g1, g2, (h, w), size, offset)
    p1 = grid_to_source(g1, (h, w), size, offset).reshape(b, h * w, 2)  # (B, n, 2)
    p2 = grid_to_source(g2, (h, w), size, offset).reshape(b, h * w, 2)
    q = source_to_view(p1, g2, size)  # (B, n, 2) view-2 pixels
    lo_y = 4 * torch.arange(h, dtype=torch.float64) + offset - 2  # (h,) region starts
    lo_x = 4 * torch.arange(w, dtype=torch.float64) + offset - 2
    in_y = ((q[..., 0, None] >= lo_y) & (q[..., 0, None] < lo_y + 4)).any(-1)  # (B, n)
    in_x = ((q[..., 1, None] >= lo_x) & (q[..., 1, None] < lo_x + 4)).any(-1)
    inside = (q[..., 0] >= 0) & (q[..., 0] < size[0]) & (q[..., 1] >= 0) & (q[..., 1] < size[1])
    valid = in_y & in_x & inside
    assert torch.equal(corr >= 0, valid)
    assert int(valid.sum()) > 10
    dist = torch.cdist(p1, p2)  # (B, n, n) source distance to every view-2 centre
    chosen = torch.gather(dist, 2, corr.clamp(min=0)[..., None])[..., 0]  # (B, n)
    assert bool((chosen <= dist.amin(dim=2) + 1e-9)[valid].all())
    # Within half a view-2 cell along each axis.
    gap = (p1 - torch.gather(p2, 1, corr.clamp(min=0)[..., None].expand(-1, -1, 2))).abs()  # (B, n, 2)
    cell = torch.stack([g2[:, 2, None] / h, g2[:, 3, None] / w], dim=-1)  # (B, 1, 2)
    assert bool((gap <= cell / 2 + 1e-9)[valid].all())


def test_correspondence_checks_sizes() -> None:
    with pytest.raises(ValueError, match="grid and view size"):
        correspondence(geom(0, 0, 8, 8), geom(0, 0, 8, 8), (0, 4), 16)


# ----------------------------------------------------------------------------- coordinate maps


def test_round_trip_source_view_source() -> None:
    g = torch.Generator().manual_seed(0)
    geoms = torch.cat([geom(4, 7, 30, 50), geom(10, 0, 45, 20, flip=True)]).double()
    points = torch.rand(2, 9, 2, generator=g, dtype=torch.float64) * 64  # (B, N, 2) source (y, x)
    view = source_to_view(points, geoms, (32, 48))
    torch.testing.assert_close(view_to_source(view, geoms, (32, 48)), points)
    torch.testing.assert_close(source_to_view(view_to_source(view, geoms, 32), geoms, 32), view)
    # Cell centres: grid -> source -> view gives s * a + offset back, flipped views alike.
    for offset in (CELL_OFFSET, 1.25):
        centres = source_to_view(grid_to_source(geoms, (8, 12), (32, 48), offset), geoms, (32, 48))
        torch.testing.assert_close(
            centres[:, :, 0, 0], (4 * torch.arange(8.0) + offset).double().expand(2, 8)
        )
        torch.testing.assert_close(
            centres[:, 0, :, 1], (4 * torch.arange(12.0) + offset).double().expand(2, 12)
        )


def test_grid_centres_in_source() -> None:
    # Views of 8 x 16 px over 40 x 80 source px (5 source px per view px), grid 2 x 4 (s = 4).
    src = grid_to_source(geom(10, 20, 40, 80), (2, 4), (8, 16))  # view centres 0.5, 4.5, ...
    assert torch.equal(src[0, :, 0, 0], torch.tensor([12.5, 32.5]))
    assert torch.equal(src[0, 0, :, 1], torch.tensor([22.5, 42.5, 62.5, 82.5]))
    # A flipped view keeps its cells at 4b + 0.5 in view coordinates; the flip maps x to
    # left + (1 - x / W) * width = 100 - 5x: the centres are not the mirror of the unflipped ones.
    flipped = grid_to_source(geom(10, 20, 40, 80, flip=True), (2, 4), (8, 16))
    assert torch.equal(flipped[0, 0, :, 1], torch.tensor([97.5, 77.5, 57.5, 37.5]))
    assert torch.equal(flipped[0, :, 0, 0], src[0, :, 0, 0])
    # Offset s / 2 (block centres) is mirror-symmetric.
    blocks = grid_to_source(geom(10, 20, 40, 80), (2, 4), (8, 16), offset=2.0)
    assert torch.equal(blocks[0, 0, :, 1], torch.tensor([30.0, 50.0, 70.0, 90.0]))
    blocks = grid_to_source(geom(10, 20, 40, 80, flip=True), (2, 4), (8, 16), offset=2.0)
    assert torch.equal(blocks[0, 0, :, 1], torch.tensor([90.0, 70.0, 50.0, 30.0]))


def test_map_boxes_known_and_inverse() -> None:
    boxes = torch.tensor([[[20.0, 10.0, 30.0, 26.0]]])  # (x1, y1, x2, y2) in source px
    plain = map_boxes(boxes, geom(10, 10, 32, 40), 16)
    torch.testing.assert_close(plain, torch.tensor([[[4.0, 0.0, 8.0, 8.0]]]))
    flipped = map_boxes(boxes, geom(10, 10, 32, 40, flip=True), 16)
    torch.testing.assert_close(flipped, torch.tensor([[[8.0, 0.0, 12.0, 8.0]]]))
    # Back to the source: the corners of the view box are the source box's corners.
    g = geom(10, 10, 32, 40, flip=True)
    x1, y1, x2, y2 = flipped[0, 0]
    corners = view_to_source(torch.tensor([[[y1, x1], [y2, x2]]]), g, 16)  # (1, 2, 2) as (y, x)
    assert sorted(corners[0, :, 1].tolist()) == [20.0, 30.0]
    assert sorted(corners[0, :, 0].tolist()) == [10.0, 26.0]


# ----------------------------------------------------------------------------- the real network


def test_default_offset_matches_deeplabv3plus_receptive_fields() -> None:
    """Input-gradient centroids of DeepLabV3+ / ResNet-18 decoder cells lie on 4a + CELL_OFFSET.

    The central 4 x 4 cells of a 64 px input (eval mode, random weights), averaged with the
    kernel-mirrored network (see `cell_geometry.mirrored_cell_offset`): 0.36 to 0.60 px over 8
    seeds; block centres 4a + 2 would give 2.
    """
    from cell_geometry import mirrored_cell_offset
    from pixcon.models.segmenter import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter(num_classes=3).eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stride, measured = mirrored_cell_offset(model, image)
    assert stride == 4
    assert bool(((measured - CELL_OFFSET).abs() < 0.6).all()), measured.tolist()


# ----------------------------------------------------------------------------- sampling and content


def test_sample_view_fits_and_is_deterministic() -> None:
    views = [sample_view(50, 80, 16, generator=torch.Generator().manual_seed(s)) for s in range(50)]
    again = [sample_view(50, 80, 16, generator=torch.Generator().manual_seed(s)) for s in range(50)]
    assert views == again
    for v in views:
        assert v.top >= 0 and v.top + v.height <= 50 and v.left >= 0 and v.left + v.width <= 80
        assert 0.3 * 4000 * 0.9 <= v.area <= 4000
    assert {v.flip for v in views} == {True, False}
    assert not any(sample_view(50, 80, 16, hflip=False).flip for _ in range(10))
    assert ViewParams.from_tensor(views[0].to_tensor(), 16) == views[0]


def _coordinate_image(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image with channels (y / h, x / w, 0) at pixel centres' indices, and mask = y * w + x."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    image = torch.stack([ys / h, xs / w, torch.zeros_like(ys)])  # (3, H, W)
    mask = torch.arange(h * w).reshape(h, w)  # (H, W)
    return image, mask


@pytest.mark.parametrize("seed", range(4))
def test_views_show_the_source_content_their_geometry_says(seed: int) -> None:
    h, w, s = 72, 96, 32
    image, mask = _coordinate_image(h, w)
    p = sample_view(h, w, s, scale=(0.1, 1.0), generator=torch.Generator().manual_seed(seed))
    view, view_mask = apply_view(p, image, mask)
    geo = p.to_tensor()[None].double()
    centres = grid_to_source(geo, s, s)[0]  # (S, S, 2) source point of every view pixel's centre
    # Mask (nearest, centre-aligned): exactly the source pixel containing that point.
    expected_mask = centres[..., 0].floor().long() * w + centres[..., 1].floor().long()
    assert torch.equal(view_mask, expected_mask)
    # Image (bilinear, antialiased) of a linear ramp: the ramp at that point, away from the crop's
    # border where the filter reaches outside the crop. Antialiasing's truncated filter windows
    # (PIL's rule) are slightly asymmetric: up to ~0.08 source px off on a ramp, hence 0.1 px.
    margin_y, margin_x = p.height / s + 1, p.width / s + 1
    y, x = centres[..., 0], centres[..., 1]
    interior = (
        (y > p.top + margin_y)
        & (y < p.top + p.height - margin_y)
        & (x > p.left + margin_x)
        & (x < p.left + p.width - margin_x)
    )
    assert interior.sum() > 20
    torch.testing.assert_close(view[0][interior].double(), ((y - 0.5) / h)[interior], atol=0.1 / h, rtol=0)
    torch.testing.assert_close(view[1][interior].double(), ((x - 0.5) / w)[interior], atol=0.1 / w, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_corresponding_pixels_show_the_same_content(seed: int) -> None:
    h, w, s = 64, 64, 24
    image, mask = _coordinate_image(h, w)
    ds = TwoViews(
        _Memory(image, mask), size=s, scale=(0.2, 1.0), color_jitter=0.0, min_overlap=0.3, seed=seed
    )
    item = ds[0]
    g1, g2 = item["geom1"][None].double(), item["geom2"][None].double()
    corr = correspondence(g1, g2, s, s)[0]  # pixel-level grid: (S*S,)
    ok = corr >= 0
    assert ok.sum() > 0
    m1, m2 = item["mask1"].flatten()[ok], item["mask2"].flatten()[corr[ok]]  # source pixel ids
    # The two view pixels see source points at most half a view-2 pixel apart: their source
    # pixels differ by at most ceil(half a view-2 pixel) + 1 along each axis.
    tol_y, tol_x = int(g2[0, 2] / s / 2) + 1, int(g2[0, 3] / s / 2) + 1
    assert bool(((m1 // w - m2 // w).abs() <= tol_y).all())
    assert bool(((m1 % w - m2 % w).abs() <= tol_x).all())
    # Image values agree to the same tolerance (ramps with slope 1/h, 1/w).
    v1 = item["view1"].flatten(1)[:, ok]
    v2 = item["view2"].flatten(1)[:, corr[ok]]
    assert float((v1[0] - v2[0]).abs().max()) <= (tol_y + 1) / h
    assert float((v1[1] - v2[1]).abs().max()) <= (tol_x + 1) / w


@pytest.mark.parametrize("seed", range(4))
def test_corresponding_cells_show_the_same_content(seed: int) -> None:
    # A stride-4 grid whose cell a sees exactly view pixel 4a (centre 4a + 0.5, the default cell
    # model): the views subsampled by 4. Matched cells must show source points at most half a
    # view-2 cell apart along each axis (+ antialiasing slack), flips included. The block-centre
    # model (offset 2) breaks this by several source px once one view is flipped.
    h, w, s = 96, 96, 32
    image, mask = _coordinate_image(h, w)
    ds = TwoViews(
        _Memory(image, mask), size=s, scale=(0.3, 1.0), color_jitter=0.0, min_overlap=0.3, seed=seed
    )
    item = ds[0]
    g1, g2 = item["geom1"][None].double(), item["geom2"][None].double()

    def source_points(view: torch.Tensor) -> torch.Tensor:  # (8*8, 2) source (y, x) seen by each cell
        cells = view[:2, ::4, ::4].double()  # (2, 8, 8): the ramps at pixel 4a
        return torch.stack([cells[0] * h + 0.5, cells[1] * w + 0.5], dim=-1).reshape(-1, 2)

    src1, src2 = source_points(item["view1"]), source_points(item["view2"])
    half = torch.stack([g2[0, 2], g2[0, 3]]) / 8 / 2  # half a view-2 cell in source px, (y, x)

    def worst(offset: float) -> float:  # largest excess over half a cell among matched cells
        corr = correspondence(g1, g2, 8, s, offset)[0]  # (64,)
        ok = corr >= 0
        assert int(ok.sum()) >= 10
        return float(((src1[ok] - src2[corr[ok]]).abs() - half).max())

    assert worst(CELL_OFFSET) <= 0.25
    if item["geom1"][4] != item["geom2"][4]:  # one view flipped
        assert worst(2.0) > 1.0


# ----------------------------------------------------------------------------- dataset wrapper


class _Memory:
    """A one-image dataset without transform (the protocol's attributes only)."""

    transform = None
    num_classes, ignore_index = 3, 255

    def __init__(self, image: torch.Tensor, mask: torch.Tensor, n: int = 1) -> None:
        self.image, self.mask_, self.n = image, mask, n
        self.in_channels = image.shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image, self.mask_


def test_two_views_items_collate() -> None:
    g = torch.Generator().manual_seed(0)
    base = _Memory(torch.rand(4, 40, 50, generator=g), torch.randint(3, (40, 50), generator=g), n=3)
    ds = TwoViews(base, size=16, seed=1)
    batch = default_collate([ds[i] for i in range(3)])
    assert batch["view1"].shape == batch["view2"].shape == (3, 4, 16, 16)
    assert batch["geom1"].shape == batch["geom2"].shape == (3, 5) and batch["geom1"].dtype == torch.float32
    assert batch["mask1"].shape == (3, 16, 16) and batch["mask2"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1, 2]
    assert (ds.num_classes, ds.ignore_index, ds.in_channels, len(ds)) == (3, 255, 4, 3)


def test_two_views_overlap_seed_and_epoch() -> None:
    base = _Memory(*_coordinate_image(48, 48), n=20)
    ds = TwoViews(base, size=16, scale=(0.1, 1.0), min_overlap=0.6, seed=3)
    for i in range(20):
        p1 = ViewParams.from_tensor(ds[i]["geom1"], 16)
        p2 = ViewParams.from_tensor(ds[i]["geom2"], 16)
        assert overlap_fraction(p1, p2) >= 0.6
    first = [ds[i]["geom2"] for i in range(5)]
    assert all(torch.equal(a, ds[i]["geom2"]) for i, a in enumerate(first))  # same seed, epoch, index
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i]["geom2"]) for i, a in enumerate(first))


def test_two_views_fallback_reuses_view1_box() -> None:
    base = _Memory(*_coordinate_image(48, 48))
    ds = TwoViews(base, size=16, scale=(0.2, 0.3), min_overlap=1.0, max_tries=2, seed=0)
    item = ds[0]
    assert torch.equal(item["geom1"][:4], item["geom2"][:4])


def test_two_views_rejects_bad_arguments() -> None:
    base = _Memory(*_coordinate_image(8, 8))
    base_with_transform = _Memory(*_coordinate_image(8, 8))
    base_with_transform.transform = object()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="transform=None"):
        TwoViews(base_with_transform, size=8)
    with pytest.raises(ValueError, match="min_overlap"):
        TwoViews(base, size=8, min_overlap=1.5)
    with pytest.raises(ValueError, match="scale"):
        TwoViews(base, size=8, scale=(0.0, 1.0))


def test_color_jitter_seeded_image_only_and_extra_bands_kept() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 12, 12, generator=g)
    a = color_jitter(image, 0.4, torch.Generator().manual_seed(5))
    b = color_jitter(image, 0.4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a[:3], image[:3])
    assert torch.equal(a[3], image[3])  # the IR band is not jittered
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(color_jitter(image, 0.0), image)
    for c in (1, 2):  # grey and two-band images: brightness and contrast only
        few = color_jitter(image[:c], 0.4, torch.Generator().manual_seed(5))
        assert few.shape == (c, 12, 12) and not torch.equal(few, image[:c])
    # Masks never pass through the jitter: TwoViews' masks are exact crops of the source mask.
    base = _Memory(*_coordinate_image(32, 32))
    item = TwoViews(base, size=32, scale=(1.0, 1.0), hflip=False, color_jitter=0.8, seed=0)[0]
    assert torch.equal(item["mask1"], base.mask_)
