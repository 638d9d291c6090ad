"""Tests for segmentation.sampling (tiny hand-built volumes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from segmentation.sampling import PatchLocation, PatchSampler


def _case(case_id, image, mask, lesions=None):
    case = SimpleNamespace(case_id=case_id, image=image, mask=mask)
    if lesions is not None:
        case.lesions = lesions
    return case


def _two_lesion_case():
    """A 4-voxel lesion (image value 1) and a 2000-voxel lesion (image value 2), far apart."""
    shape = (48, 48, 40)
    image = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[4:6, 4:6, 4] = 1  # 4 voxels
    image[4:6, 4:6, 4] = 1.0
    mask[30:40, 30:40, 20:40] = 1  # 2000 voxels
    image[30:40, 30:40, 20:40] = 2.0
    return _case("two", image, mask)


def _cached_lesions(mask):
    labels, _ = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    out = []
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        out.append(
            {
                "bbox": [[s.start, s.stop] for s in box],
                "voxel_count": int((labels[box] == n).sum()),
            }
        )
    return out


class _RecordingArray:
    """Array wrapper that records the size of every region read from it."""

    def __init__(self, array):
        self._array = array
        self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype
        self.read_sizes = []

    def __getitem__(self, key):
        out = self._array[key]
        self.read_sizes.append(int(np.size(out)))
        return out

    def __array__(self, dtype=None, copy=None):  # a whole-volume read is recorded too
        self.read_sizes.append(int(self._array.size))
        return np.asarray(self._array, dtype=dtype)


# ------------------------------------------------------------------ foreground share
def test_foreground_share_defaults_to_one_third_over_2000_draws():
    sampler = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), seed=3)
    share = np.mean([sampler.locate(i).foreground for i in range(2000)])
    # binomial sd = sqrt(1/3 * 2/3 / 2000) = 0.0105; 3.5 sd
    assert abs(share - 1 / 3) < 0.037


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_foreground_share_follows_fraction(fraction):
    sampler = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), foreground_fraction=fraction, seed=0)
    share = np.mean([sampler.locate(i).foreground for i in range(2000)])
    assert abs(share - fraction) < 0.04
    if fraction in (0.0, 1.0):
        assert share == fraction


def test_foreground_patch_contains_its_lesion_voxel_within_a_quarter_jitter():
    sampler = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), foreground_fraction=1.0, seed=1)
    for i in range(200):
        loc = sampler.locate(i)
        offset = np.asarray(loc.voxel) - np.asarray(loc.start)
        # centre 4, jitter up to 8 // 4 = 2 -> voxel lands at offset 2..6
        assert np.all((offset >= 2) & (offset <= 6)), (loc, offset)
        image, mask = sampler.sample(i)
        assert mask[tuple(offset)][0] == 1
        assert image[tuple(offset)][0] in (1.0, 2.0)


# ------------------------------------------------------------------ lesion balance
def test_lesion_balance_small_and_large_lesion_each_get_half():
    sampler = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), foreground_fraction=1.0, seed=7)
    assert sampler.n_lesions == 2
    picked = []
    for i in range(1000):
        loc = sampler.locate(i)
        image, mask = sampler.extract(loc)
        values = np.unique(image[mask[..., 0] == 1])
        assert values.size == 1  # lesions are > 8 voxels apart: one lesion per patch
        picked.append(values[0])
        assert image[tuple(np.asarray(loc.voxel) - loc.start)][0] == values[0]
    share_small = np.mean(np.asarray(picked) == 1.0)
    # voxel-uniform sampling would give 4 / 2004 = 0.002; lesion-balanced gives 0.5 (sd 0.016)
    assert abs(share_small - 0.5) < 0.06


def test_lesion_balance_over_cases_is_per_lesion_not_per_case():
    # case a: 1 lesion, case b: 3 lesions -> case a gets 1/4 of foreground patches
    shape = (24, 24, 24)
    mask_a = np.zeros(shape, np.uint8)
    mask_a[2:4, 2:4, 2:4] = 1
    mask_b = np.zeros(shape, np.uint8)
    mask_b[2:4, 2:4, 2:4] = 1
    mask_b[10:12, 10:12, 10:12] = 1
    mask_b[20:22, 20:22, 20:22] = 1
    image = np.zeros(shape, np.float32)
    sampler = PatchSampler(
        [_case("a", image, mask_a), _case("b", image, mask_b)], patch_size=(4, 4, 4), foreground_fraction=1.0
    )
    share_a = np.mean([sampler.locate(i).case_id == "a" for i in range(2000)])
    assert abs(share_a - 0.25) < 0.04


# ------------------------------------------------------------------ cached lesions, memmaps
def test_cached_lesions_give_the_same_stream_as_computed_components():
    case = _two_lesion_case()
    cached = _case("two", case.image, case.mask, lesions=_cached_lesions(case.mask))
    a = PatchSampler([case], patch_size=(8, 8, 8), seed=5)
    b = PatchSampler([cached], patch_size=(8, 8, 8), seed=5)
    assert sorted(lesion.voxel_count for lesion in b.lesions) == [4, 2000]
    for i in range(50):
        assert a.locate(i) == b.locate(i)
        np.testing.assert_array_equal(a.sample(i)[0], b.sample(i)[0])


def test_cached_lesions_accept_inclusive_stop_and_flat_bbox():
    case = _two_lesion_case()
    cached = _cached_lesions(case.mask)
    inclusive = [{"bbox": [[a, b - 1] for a, b in e["bbox"]], "voxel_count": e["voxel_count"]} for e in cached]
    flat = [
        {"bbox": [a for a, _ in e["bbox"]] + [b for _, b in e["bbox"]], "voxel_count": e["voxel_count"]}
        for e in cached
    ]
    ref = PatchSampler([case], patch_size=(8, 8, 8), seed=2)
    for lesions in (inclusive, flat):
        s = PatchSampler([_case("two", case.image, case.mask, lesions)], patch_size=(8, 8, 8), seed=2)
        assert [s.locate(i) for i in range(30)] == [ref.locate(i) for i in range(30)]


def test_stale_cached_lesion_raises_naming_the_case():
    case = _two_lesion_case()
    lesions = _cached_lesions(case.mask)
    lesions[0]["voxel_count"] += 1
    with pytest.raises(ValueError, match=r"case 'two'.*stale"):
        PatchSampler([_case("two", case.image, case.mask, lesions)], patch_size=(8, 8, 8))


def test_bad_cached_bbox_raises():
    case = _two_lesion_case()
    with pytest.raises(ValueError, match="bbox"):
        PatchSampler([_case("two", case.image, case.mask, [{"bbox": [1, 2], "voxel_count": 4}])], patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="voxel_count"):
        PatchSampler([_case("two", case.image, case.mask, [{"bbox": [[4, 6]] * 3}])], patch_size=(8, 8, 8))


def test_only_patch_regions_are_read_with_cached_lesions(tmp_path):
    case = _two_lesion_case()
    np.save(tmp_path / "image.npy", case.image)
    np.save(tmp_path / "mask.npy", case.mask)
    image = _RecordingArray(np.load(tmp_path / "image.npy", mmap_mode="r"))
    mask = _RecordingArray(np.load(tmp_path / "mask.npy", mmap_mode="r"))
    sampler = PatchSampler(
        [_case("two", image, mask, _cached_lesions(case.mask))], patch_size=(8, 8, 8), seed=0
    )
    bbox_reads = max(mask.read_sizes)
    assert bbox_reads <= 12 * 12 * 21  # largest bbox + 1 voxel margin, never the volume
    image.read_sizes.clear()
    mask.read_sizes.clear()
    for i in range(100):
        sampler.sample(i)
    assert max(image.read_sizes + mask.read_sizes) <= 8 * 8 * 8
    assert len(image.read_sizes) == 100


# ------------------------------------------------------------------ determinism
def test_same_index_same_patch_and_order_does_not_matter():
    a = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), seed=11)
    b = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), seed=11)
    forward = [a.sample(i) for i in range(20)]
    backward = [b.sample(i) for i in reversed(range(20))][::-1]
    for (xa, ma), (xb, mb) in zip(forward, backward):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ma, mb)


def test_different_seed_gives_different_stream():
    a = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), seed=0)
    b = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8), seed=1)
    assert sum(a.locate(i) != b.locate(i) for i in range(20)) >= 18


# ------------------------------------------------------------------ padding
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_patch_larger_than_scan_is_padded(fraction):
    shape = (4, 5, 3)
    image = (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape)
    mask = np.zeros(shape, np.uint8)
    mask[1, 2, 1] = 1
    sampler = PatchSampler(
        [_case("tiny", image, mask)], patch_size=(8, 8, 8), foreground_fraction=fraction, pad_value=-7.0, seed=4
    )
    margin = 10
    padded_image = np.pad(image, margin, constant_values=-7.0)
    padded_mask = np.pad(mask, margin)
    for i in range(30):
        loc = sampler.locate(i)
        x, m = sampler.sample(i)
        assert x.shape == (8, 8, 8, 1) and x.dtype == np.float32
        assert m.shape == (8, 8, 8, 1) and m.dtype == np.uint8
        box = tuple(slice(s + margin, s + margin + 8) for s in loc.start)
        np.testing.assert_array_equal(x[..., 0], padded_image[box])
        np.testing.assert_array_equal(m[..., 0], padded_mask[box])
        assert (x == -7.0).sum() >= 8**3 - image.size  # the scan cannot fill the patch


def test_background_patch_larger_than_scan_contains_the_whole_scan():
    shape = (4, 5, 3)
    image = np.ones(shape, np.float32)
    sampler = PatchSampler(
        [_case("tiny", image, np.zeros(shape, np.uint8))], patch_size=(8, 8, 8), foreground_fraction=0.0, pad_value=-1.0
    )
    for i in range(20):
        x, _ = sampler.sample(i)
        assert (x == 1.0).sum() == image.size


def test_patch_entirely_outside_scan_is_all_padding():
    shape = (6, 6, 6)
    image = np.ones(shape, np.float32)
    mask = np.ones(shape, np.uint8)
    sampler = PatchSampler([_case("c", image, mask)], patch_size=(4, 4, 4), pad_value=-3.0)
    loc = PatchLocation(0, 0, "c", False, None, None, (10, -9, 0), None)
    x, m = sampler.extract(loc)
    assert np.all(x == -3.0) and np.all(m == 0)


# ------------------------------------------------------------------ 2D and 2.5D
def _slice_index_volume(shape=(10, 10, 6)):
    image = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape).copy()  # value = k
    mask = np.zeros(shape, np.uint8)
    mask[4:6, 4:6, 0] = 1
    mask[4:6, 4:6, 3] = 2  # label values > 0 are foreground
    return image, mask


def test_2d_patch_shape_and_slice_content():
    image, mask = _slice_index_volume()
    sampler = PatchSampler([_case("c", image, mask)], patch_size=(6, 4), seed=0)
    assert sampler.image_shape == (6, 4, 1) and sampler.mask_shape == (6, 4, 1)
    for i in range(40):
        loc = sampler.locate(i)
        x, m = sampler.sample(i)
        assert x.shape == (6, 4, 1) and m.shape == (6, 4, 1)
        inside = x[..., 0] != 0 if loc.slice_index != 0 else np.ones((6, 4), bool)
        assert np.all(x[..., 0][inside] == loc.slice_index)
        assert set(np.unique(m)) <= {0, 1}
        if loc.foreground:
            assert loc.slice_index in (0, 3) and m.sum() >= 1


@pytest.mark.parametrize("k, expected", [(0, [0, 0, 0, 1, 2]), (3, [1, 2, 3, 4, 5]), (5, [3, 4, 5, 5, 5])])
def test_25d_channels_are_neighbouring_slices_with_edges_replicated(k, expected):
    image, mask = _slice_index_volume()
    sampler = PatchSampler([_case("c", image, mask)], patch_size=(4, 4), context_slices=2, pad_value=-1.0)
    assert sampler.n_channels == 5 and sampler.image_shape == (4, 4, 5)
    loc = PatchLocation(0, 0, "c", False, None, None, (3, 3), k)
    x, m = sampler.extract(loc)
    assert x.shape == (4, 4, 5) and m.shape == (4, 4, 1)
    np.testing.assert_array_equal(x[1, 1], expected)
    np.testing.assert_array_equal(m[..., 0], (mask[3:7, 3:7, k] > 0).astype(np.uint8))


def test_25d_padding_outside_the_plane():
    image, mask = _slice_index_volume()
    sampler = PatchSampler([_case("c", image, mask)], patch_size=(4, 4), context_slices=1, pad_value=-1.0)
    x, _ = sampler.extract(PatchLocation(0, 0, "c", False, None, None, (-2, 8), 2))
    np.testing.assert_array_equal(x[0, 0], [-1, -1, -1])
    np.testing.assert_array_equal(x[2, 0], [1, 2, 3])


def test_3d_mask_is_binary_and_channels_last():
    image, mask = _slice_index_volume()
    sampler = PatchSampler([_case("c", image, mask)], patch_size=(4, 4, 4), foreground_fraction=1.0)
    x, m = sampler.sample(0)
    assert x.shape == (4, 4, 4, 1) and m.shape == (4, 4, 4, 1)
    assert set(np.unique(m)) <= {0, 1} and m.sum() >= 1


# ------------------------------------------------------------------ empty cases
def test_case_without_label_is_a_background_source():
    image = np.zeros((12, 12, 12), np.float32)
    empty = np.zeros((12, 12, 12), np.uint8)
    full = empty.copy()
    full[5:7, 5:7, 5:7] = 1
    sampler = PatchSampler([_case("empty", image, empty), _case("lesion", image, full)], patch_size=(4, 4, 4))
    assert sampler.background_only_cases == ("empty",) and sampler.foreground_cases == ("lesion",)
    locs = [sampler.locate(i) for i in range(300)]
    assert {loc.case_id for loc in locs if loc.foreground} == {"lesion"}
    assert {loc.case_id for loc in locs if not loc.foreground} == {"empty", "lesion"}
    assert sampler.summary()["n_lesions"] == 1


def test_no_label_voxel_anywhere_raises_naming_cases():
    image = np.zeros((6, 6, 6), np.float32)
    empty = np.zeros((6, 6, 6), np.uint8)
    cases = [_case("case_a", image, empty), _case("case_b", image, empty)]
    with pytest.raises(ValueError, match=r"foreground_fraction.*'case_a', 'case_b'"):
        PatchSampler(cases, patch_size=(4, 4, 4))


def test_no_label_voxel_anywhere_is_fine_without_foreground_patches():
    image = np.zeros((6, 6, 6), np.float32)
    empty = np.zeros((6, 6, 6), np.uint8)
    sampler = PatchSampler([_case("a", image, empty)], patch_size=(4, 4, 4), foreground_fraction=0.0)
    assert sampler.n_lesions == 0
    assert sampler.sample(0)[1].sum() == 0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"patch_size": (8, 8, 8, 8)}, ValueError, "patch_size"),
        ({"patch_size": (8, 0, 8)}, ValueError, "patch_size"),
        ({"patch_size": 8}, TypeError, "patch_size"),
        ({"patch_size": (8, 8, 8), "foreground_fraction": 1.5}, ValueError, "foreground_fraction=1.5"),
        ({"patch_size": (8, 8, 8), "context_slices": 1}, ValueError, "context_slices=1"),
        ({"patch_size": (8, 8), "context_slices": -1}, ValueError, "context_slices"),
        ({"patch_size": (8, 8, 8), "seed": -1}, ValueError, "seed=-1"),
        ({"patch_size": (8, 8, 8), "seed": 1.5}, TypeError, "seed"),
        ({"patch_size": (8, 8, 8), "pad_value": float("nan")}, ValueError, "pad_value"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        PatchSampler([_two_lesion_case()], **kwargs)


def test_shape_mismatch_names_the_case():
    with pytest.raises(ValueError, match=r"case 'bad'.*mask.shape=\(4, 4, 5\)"):
        bad = _case("bad", np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 5), np.uint8))
        PatchSampler([bad], patch_size=(2, 2, 2))


def test_non_3d_volume_names_the_case():
    with pytest.raises(ValueError, match=r"case 'flat'.*image"):
        PatchSampler([_case("flat", np.zeros((4, 4), np.float32), np.ones((4, 4), np.uint8))], patch_size=(2, 2, 2))


def test_no_cases_raises():
    with pytest.raises(ValueError, match="at least one case"):
        PatchSampler([], patch_size=(2, 2, 2))


def test_negative_index_raises():
    sampler = PatchSampler([_two_lesion_case()], patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="index=-1"):
        sampler.sample(-1)


# ------------------------------------------------------------------ background in the body
def _body_case(case_id="body", shape=(40, 36, 30)):
    """Air (0.0) around a 'body' box (0.5) of 10x12x9 voxels, one lesion inside it."""
    image = np.zeros(shape, np.float32)
    image[20:30, 10:22, 5:14] = 0.5
    mask = np.zeros(shape, np.uint8)
    mask[24:26, 14:16, 8:10] = 1
    image[mask > 0] = 0.9
    return _case(case_id, image, mask)


@pytest.mark.parametrize("patch_size", [(8, 8, 8), (8, 8)])
def test_body_background_centres_lie_above_the_threshold(patch_size):
    case = _body_case()
    sampler = PatchSampler([case], patch_size=patch_size, foreground_fraction=0.0, seed=4,
                           background_threshold=0.1)
    half = np.asarray(patch_size) // 2
    centres = set()
    for i in range(500):
        loc = sampler.locate(i)
        assert not loc.foreground
        ij = np.asarray(loc.start) + half
        k = loc.slice_index if len(patch_size) == 2 else ij[2]
        centre = (int(ij[0]), int(ij[1]), int(k))
        assert case.image[centre] > 0.1, (i, loc)
        centres.add(centre)
    # the draws spread over the body box (1,080 voxels), not a few grid corners
    assert len(centres) > 250


def test_uniform_background_mostly_misses_a_small_body():
    case = _body_case()
    sampler = PatchSampler([case], patch_size=(8, 8, 8), foreground_fraction=0.0, seed=4)
    inside = [case.image[tuple(np.asarray(sampler.locate(i).start) + 4)] > 0.1 for i in range(500)]
    # the body is 1,080 of the 43,200 voxels (2.5 %): uniform centres land there rarely
    assert np.mean(inside) < 0.1


def test_body_background_keeps_foreground_lesion_balanced_and_is_deterministic():
    a = PatchSampler([_body_case()], patch_size=(8, 8, 8), foreground_fraction=0.5, seed=9,
                     background_threshold=0.1)
    b = PatchSampler([_body_case()], patch_size=(8, 8, 8), foreground_fraction=0.5, seed=9,
                     background_threshold=0.1)
    assert [a.locate(i) for i in range(100)] == [b.locate(i) for i in range(100)]
    share = np.mean([a.locate(i).foreground for i in range(2000)])
    assert abs(share - 0.5) < 0.04
    assert a.summary()["background_threshold"] == 0.1


def test_case_without_body_falls_back_to_uniform_with_a_warning(caplog):
    empty = _case("air_only", np.zeros((20, 20, 20), np.float32), np.zeros((20, 20, 20), np.uint8))
    with caplog.at_level("WARNING", logger="segmentation.sampling"):
        sampler = PatchSampler([empty], patch_size=(8, 8, 8), foreground_fraction=0.0, seed=0,
                               background_threshold=0.1)
    assert "air_only" in caplog.text and "background_threshold" in caplog.text
    starts = {sampler.locate(i).start for i in range(200)}
    assert len(starts) > 50  # uniform positions, no crash


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high", True])
def test_bad_background_threshold_is_an_error(bad):
    with pytest.raises(ValueError, match="background_threshold"):
        PatchSampler([_body_case()], patch_size=(8, 8, 8), background_threshold=bad)
