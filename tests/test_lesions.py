"""The lesion table: known values on tiny hand-built masks (segmentation.lesions)."""
import math

import numpy as np
import pytest
from scipy import ndimage

from segmentation.lesions import (
    Components,
    bounding_box,
    check_affine,
    connectivity_structure,
    equivalent_diameter_mm,
    find_components,
    lesion_table,
)


def _table(mask, **kwargs):
    connectivity = kwargs.pop("connectivity", 26)
    return lesion_table(find_components(mask, connectivity=connectivity), **kwargs)


# --------------------------------------------------------------------------- empty
def test_empty_mask_has_no_components_and_an_empty_table():
    found = find_components(np.zeros((3, 4, 5), bool))
    assert found.count == 0 and found.box is None and found.offset == (0, 0, 0)
    assert found.full().shape == (3, 4, 5) and not found.full().any()
    assert lesion_table(found, spacing_mm=(1, 1, 1), intensity=np.ones((3, 4, 5))) == []
    assert bounding_box(np.zeros((3, 4, 5), bool)) is None


# --------------------------------------------------------------------------- known values
def test_single_voxel_known_values_with_anisotropic_spacing():
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = True
    (lesion,) = _table(mask, spacing_mm=(1.0, 2.0, 3.0))
    assert lesion.label == 1 and lesion.voxel_count == 1
    assert lesion.volume_mm3 == 6.0
    assert lesion.diameter_mm == pytest.approx((36 / math.pi) ** (1 / 3))
    assert lesion.centroid_vox == (1.0, 2.0, 3.0)
    assert lesion.centroid_mm == (1.0, 4.0, 9.0)  # no affine: index * spacing
    assert lesion.bbox == (slice(1, 2), slice(2, 3), slice(3, 4))
    assert lesion.intensity_mean is None and lesion.intensity_max is None


def test_two_voxels_2_mm_apart_in_one_lesion():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[0, 0, 1] = True
    (lesion,) = _table(mask, spacing_mm=(1.0, 1.0, 2.0))
    assert lesion.voxel_count == 2 and lesion.volume_mm3 == 4.0
    assert lesion.centroid_vox == (0.0, 0.0, 0.5) and lesion.centroid_mm == (0.0, 0.0, 1.0)


def test_cube_with_translated_affine_and_probabilities():
    mask = np.zeros((6, 6, 6), np.uint8)
    probs = np.zeros((6, 6, 6), np.float32)
    mask[1:3, 1:3, 1:3] = 1
    probs[1:3, 1:3, 1:3] = 0.5
    probs[1, 1, 1] = 0.75
    affine = np.array([[2.0, 0, 0, 10], [0, 1, 0, 20], [0, 0, 3, 30], [0, 0, 0, 1]])
    (cube,) = _table(mask, spacing_mm=(2, 1, 3), affine=affine, intensity=probs)
    assert cube.voxel_count == 8 and cube.volume_mm3 == 48.0
    assert cube.diameter_mm == pytest.approx((6 * 48 / math.pi) ** (1 / 3))
    assert cube.centroid_vox == (1.5, 1.5, 1.5)
    assert cube.centroid_mm == (13.0, 21.5, 34.5)
    assert cube.bbox == (slice(1, 3),) * 3
    assert cube.intensity_mean == pytest.approx((7 * 0.5 + 0.75) / 8)
    assert cube.intensity_max == 0.75


def test_non_diagonal_affine_maps_the_centroid_to_world_mm():
    # a 90 degree rotation about z with spacing (0.5, 2, 3): i -> +y, j -> -x
    affine = np.array([[0.0, -2.0, 0, 100], [0.5, 0, 0, -50], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    mask = np.zeros((4, 4, 4), bool)
    mask[2, 1, 0] = mask[2, 3, 0] = True  # two voxels 2 apart along j: two components
    table = _table(mask, spacing_mm=(0.5, 2.0, 3.0), affine=affine)
    assert [t.centroid_mm for t in table] == [(98.0, -49.0, 7.0), (94.0, -49.0, 7.0)]
    mask[2, 2, 0] = True
    (bar,) = _table(mask, spacing_mm=(0.5, 2.0, 3.0), affine=affine)
    assert bar.centroid_vox == (2.0, 2.0, 0.0)
    assert bar.centroid_mm == (96.0, -49.0, 7.0)
    assert bar.volume_mm3 == 3 * 0.5 * 2.0 * 3.0


def test_equivalent_diameter_of_a_known_sphere_volume():
    assert equivalent_diameter_mm(4 / 3 * math.pi * 5.0 ** 3) == pytest.approx(10.0)
    assert equivalent_diameter_mm(0.0) == 0.0


# --------------------------------------------------------------------------- order, labels
def test_components_are_numbered_in_raster_order_of_their_first_voxel():
    mask = np.zeros((5, 6, 6), bool)
    mask[0, 5, 5] = True  # small, but its first voxel comes first
    mask[2:5, 0:3, 0:3] = True
    table = _table(mask, spacing_mm=(1, 1, 1))
    assert [t.voxel_count for t in table] == [1, 27]
    assert [t.label for t in table] == [1, 2]
    assert table[1].bbox == (slice(2, 5), slice(0, 3), slice(0, 3))


@pytest.mark.parametrize("connectivity, n_corner, n_edge", [(6, 2, 2), (18, 2, 1), (26, 1, 1)])
def test_connectivity_joins_corner_and_edge_neighbours(connectivity, n_corner, n_edge):
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    edge = np.zeros((3, 3, 3), bool)
    edge[0, 0, 0] = edge[1, 1, 0] = True
    assert find_components(corner, connectivity=connectivity).count == n_corner
    assert find_components(edge, connectivity=connectivity).count == n_edge


def test_labelling_in_the_box_equals_labelling_the_full_mask():
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 18, 16), bool)
    mask[3:15, 4:12, 2:13] = rng.random((12, 8, 11)) > 0.8
    for connectivity, rank in ((6, 1), (18, 2), (26, 3)):
        found = find_components(mask, connectivity=connectivity)
        full, n = ndimage.label(mask, ndimage.generate_binary_structure(3, rank))
        assert found.count == n and np.array_equal(found.full(), full)
        assert found.offset == tuple(s.start for s in bounding_box(mask))
        table = lesion_table(found, spacing_mm=(1, 1, 1))
        assert [t.voxel_count for t in table] == list(np.bincount(full.ravel())[1:])
        assert [t.bbox for t in table] == ndimage.find_objects(full)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_numeric_mask_foreground_is_above_zero(dtype):
    mask = np.zeros((3, 3, 3), dtype)
    mask[0, 0, 0] = 2
    mask[2, 2, 2] = -1  # not foreground
    (lesion,) = _table(mask, spacing_mm=(1, 1, 1))
    assert lesion.centroid_vox == (0.0, 0.0, 0.0)
    assert find_components(mask).box == (slice(0, 1),) * 3


def test_unsigned_mask_foreground_is_non_zero():
    mask = np.zeros((3, 3, 3), np.uint8)
    mask[1, 1, 1] = 255
    mask[1, 1, 2] = 1
    (lesion,) = _table(mask, spacing_mm=(1, 1, 1))
    assert lesion.voxel_count == 2 and lesion.centroid_vox == (1.0, 1.0, 1.5)


def test_absent_labels_have_no_row():
    labels = np.zeros((3, 3, 3), np.int32)
    labels[0, 0, 0] = 1
    labels[2, 2, 2] = 3
    table = lesion_table(Components(labels, (slice(0, 3),) * 3, 3, (3, 3, 3)), spacing_mm=(1, 1, 1))
    assert [t.label for t in table] == [1, 3]


# --------------------------------------------------------------------------- errors
def test_bad_connectivity_is_an_error():
    with pytest.raises(ValueError, match="connectivity"):
        find_components(np.zeros((2, 2, 2), bool), connectivity=4)
    with pytest.raises(ValueError, match="connectivity"):
        connectivity_structure(True)


def test_mask_that_is_not_3d_is_an_error():
    with pytest.raises(ValueError, match="mask.shape"):
        find_components(np.zeros((2, 2), bool))


def test_affine_that_disagrees_with_the_spacing_is_an_error():
    mask = np.ones((1, 1, 1), bool)
    with pytest.raises(ValueError, match="affine column norms"):
        _table(mask, spacing_mm=(1, 1, 1), affine=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="affine"):
        check_affine(np.eye(3), spacing_mm=(1, 1, 1))


@pytest.mark.parametrize("spacing", [(1, 1), (1, 0, 1), (1, float("nan"), 1), None])
def test_bad_spacing_is_an_error(spacing):
    with pytest.raises(ValueError, match="spacing_mm"):
        _table(np.ones((1, 1, 1), bool), spacing_mm=spacing)


def test_intensity_of_another_shape_is_an_error():
    with pytest.raises(ValueError, match="intensity"):
        _table(np.ones((2, 2, 2), bool), spacing_mm=(1, 1, 1), intensity=np.ones((2, 2, 3)))
