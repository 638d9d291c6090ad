"""Tests for segmentation.io: canonical reading, exact write-back, bad input."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff

from segmentation import io
from segmentation.io import (
    Volume,
    VolumeError,
    atomic_write,
    case_id_from_path,
    check_pair,
    read_volume,
    volume_from_array,
    write_volume,
)

SHAPE = (3, 4, 5)
SPACING_MM = (0.7, 0.9, 2.5)


def _all_48_affines() -> list[np.ndarray]:
    """Every axis permutation x flip, with anisotropic spacing and an offset origin."""
    affines = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            rzs = np.zeros((3, 3))
            for voxel_axis, world_axis in enumerate(perm):
                rzs[world_axis, voxel_axis] = signs[voxel_axis] * SPACING_MM[voxel_axis]
            affine = np.eye(4)
            affine[:3, :3] = rzs
            affine[:3, 3] = (-12.5, 30.25, 7.0)
            affines.append(affine)
    return affines


AFFINES_48 = _all_48_affines()


def _save(path: Path, array: np.ndarray, affine: np.ndarray, *, qform_code=1, sform_code=1,
          slope=None, inter=None) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def _distinct(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(48))
def test_read_matches_nibabel_canonical_for_all_48_orientations(tmp_path, index):
    affine = AFFINES_48[index]
    path = _save(tmp_path / "ct.nii.gz", _distinct(), affine)
    vol = read_volume(path)
    canonical = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(vol.array, canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(vol.affine, canonical.affine, atol=1e-6)
    np.testing.assert_allclose(vol.affine, vol.source_affine @ inv_ornt_aff(vol.ornt, SHAPE))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array.dtype == np.float32
    assert vol.source_shape == SHAPE
    # spacing in canonical order: the voxel axis pointing along world axis w has its spacing
    perm = [int(np.argmax(np.abs(affine[:3, axis]))) for axis in range(3)]
    expected = [SPACING_MM[perm.index(world)] for world in range(3)]
    np.testing.assert_allclose(vol.spacing_mm, expected, rtol=1e-6)


@pytest.mark.parametrize("index", range(48))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_write_back_equals_source_for_all_48_orientations(tmp_path, index, suffix):
    affine = AFFINES_48[index]
    source = _distinct(dtype=np.int16)
    src_path = _save(tmp_path / f"ct{suffix}", source, affine, qform_code=1, sform_code=2)
    vol = read_volume(src_path)
    mask_canonical = (vol.array % 2 == 1).astype(np.uint8)
    out = write_volume(tmp_path / f"mask{suffix}", mask_canonical, reference=vol, kind="mask")
    written = nib.load(out)
    src = nib.load(src_path)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), (source % 2 == 1).astype(np.uint8))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, src.affine)
    assert int(written.header["qform_code"]) == 1
    assert int(written.header["sform_code"]) == 2
    np.testing.assert_array_equal(written.header.get_qform(), src.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), src.header.get_sform())
    # image round trip: canonical float array back to source order, voxel for voxel
    out_img = write_volume(tmp_path / f"img{suffix}", vol.array, reference=vol, kind="image",
                           dtype=np.int16)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out_img).dataobj), source)


def test_read_applies_scl_slope_and_inter(tmp_path):
    stored = np.array([[[0, 1], [2, 3]]], dtype=np.int16)  # (1, 2, 2)
    path = _save(tmp_path / "scaled.nii.gz", stored, np.eye(4), slope=2.0, inter=-1024.0)
    vol = read_volume(path)
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), [-1024.0, -1022.0, -1020.0, -1018.0])
    assert vol.array.dtype == np.float32


def test_spacing_comes_from_affine_not_pixdim(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    img = nib.Nifti1Image(_distinct(), affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(np.diag([5.0, 5.0, 5.0, 1.0]), code=0)  # pixdim disagrees
    nib.save(img, tmp_path / "a.nii.gz")
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.spacing_mm == pytest.approx((0.8, 0.8, 2.0))


def test_4d_with_single_volume_is_squeezed(tmp_path):
    path = _save(tmp_path / "one.nii.gz", _distinct().reshape(SHAPE + (1,)), np.eye(4))
    vol = read_volume(path)
    assert vol.array.shape == SHAPE
    assert vol.source_shape == SHAPE
    out = write_volume(tmp_path / "back.nii.gz", vol.array > 30, reference=vol, kind="mask")
    written = nib.load(out)
    assert written.shape == SHAPE + (1,)  # the input's shape: 4D with a single volume
    np.testing.assert_array_equal(np.asanyarray(written.dataobj)[..., 0],
                                  vol.to_source(vol.array > 30).astype(np.uint8))


def test_3d_reference_is_written_3d(tmp_path):
    path = _save(tmp_path / "three.nii.gz", _distinct(), np.eye(4))
    vol = read_volume(path)
    out = write_volume(tmp_path / "back.nii.gz", vol.array > 30, reference=vol, kind="mask")
    assert nib.load(out).shape == SHAPE


def test_read_mask_gives_uint8_in_canonical_order(tmp_path):
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[0, 1, 2] = 1
    affine = AFFINES_48[13]
    path = _save(tmp_path / "m.nii.gz", mask, affine)
    vol = read_volume(path, kind="mask")
    assert vol.array.dtype == np.uint8
    assert vol.array.sum() == 1
    np.testing.assert_array_equal(vol.array, apply_orientation(mask, vol.ornt))


def test_read_mask_float_integral_values_accepted(tmp_path):
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[1, 1, 1] = 1.0
    vol = read_volume(_save(tmp_path / "m.nii", mask, np.eye(4)), kind="mask")
    assert vol.array.dtype == np.uint8 and vol.array.sum() == 1


def test_read_mask_labels_above_one_binarised_only_when_asked(tmp_path):
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[0, 0, 0], mask[1, 1, 1] = 1, 2
    path = _save(tmp_path / "labels.nii.gz", mask, np.eye(4))
    with pytest.raises(VolumeError, match=r"labels\.nii\.gz.*binarize=True.*values=\[2\]"):
        read_volume(path, kind="mask")
    vol = read_volume(path, kind="mask", binarize=True)
    assert vol.array.sum() == 2 and vol.array.max() == 1


def test_read_mask_non_integral_values_rejected_even_with_binarize(tmp_path):
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[0, 0, 0] = 0.5
    path = _save(tmp_path / "probs.nii.gz", mask, np.eye(4))
    with pytest.raises(VolumeError, match=r"integral.*probs\.nii\.gz.*values=\[0\.5\]"):
        read_volume(path, kind="mask", binarize=True)


def test_read_mask_negative_labels_rejected(tmp_path):
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[0, 0, 0] = -1
    path = _save(tmp_path / "neg.nii.gz", mask, np.eye(4))
    with pytest.raises(VolumeError, match=r"non-negative.*neg\.nii\.gz.*values=\[-1\]"):
        read_volume(path, kind="mask", binarize=True)


def test_empty_mask_reads_as_all_zero(tmp_path):
    path = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))
    vol = read_volume(path, kind="mask")
    assert vol.array.dtype == np.uint8 and not vol.array.any()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lung_001.nii.gz", "lung_001"),
        ("lung_001_0000.nii.gz", "lung_001"),
        ("case.nii", "case"),
        ("a_0000_0000.nii", "a_0000"),
        ("_0000.nii.gz", "_0000"),
        ("CASE.NII.GZ", "CASE"),
    ],
)
def test_case_id(tmp_path, name, expected):
    assert case_id_from_path(Path("x") / name) == expected


def test_volume_case_id_from_path(tmp_path):
    path = _save(tmp_path / "lung_007_0000.nii.gz", _distinct(), np.eye(4))
    assert read_volume(path).case_id == "lung_007"


def test_case_id_without_path_raises():
    vol = volume_from_array(_distinct(), np.eye(4))
    with pytest.raises(ValueError, match="path=None"):
        _ = vol.case_id


def test_volume_from_array_matches_read_volume(tmp_path):
    affine = AFFINES_48[29]
    path = _save(tmp_path / "ct.nii.gz", _distinct(), affine)
    from_file = read_volume(path)
    from_array = volume_from_array(_distinct(), affine, path=path)
    np.testing.assert_array_equal(from_array.array, from_file.array)
    np.testing.assert_allclose(from_array.affine, from_file.affine)
    assert from_array.spacing_mm == pytest.approx(from_file.spacing_mm)
    out = write_volume(tmp_path / "m.nii.gz", from_array.array > 10, reference=from_array,
                       kind="mask")
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-6)


def test_geometry_property_has_single_reorient_step(tmp_path):
    from segmentation import alignment
    vol = volume_from_array(_distinct(), AFFINES_48[7])
    geometry = vol.geometry
    assert isinstance(geometry, alignment.Geometry)
    assert len(geometry.steps) == 1 and isinstance(geometry.steps[0], alignment.Reorient)
    np.testing.assert_allclose(geometry.affine, vol.affine, atol=1e-9)
    assert tuple(geometry.shape) == vol.array.shape


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def test_write_probs_float32_default_and_uint8_quantised(tmp_path):
    vol = volume_from_array(np.zeros((2, 2, 2), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    probs = np.array([0.0, 0.25, 0.5, 1.0, 0.1, 0.9, 0.3, 0.7]).reshape(2, 2, 2)
    out = write_volume(tmp_path / "p.nii.gz", probs, reference=vol, kind="probs")
    written = nib.load(out)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.get_fdata(), probs, atol=1e-7)
    out8 = write_volume(tmp_path / "p8.nii.gz", probs, reference=vol, kind="probs", dtype=np.uint8)
    written8 = nib.load(out8)
    assert written8.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written8.get_fdata(), probs, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(read_volume(out8).array.max(), np.float32(1.0))


def test_write_keeps_units_and_resets_cal_range(tmp_path):
    img = nib.Nifti1Image(_distinct(), np.eye(4))
    img.header.set_xyzt_units(xyz="mm", t="msec")
    img.header["cal_min"], img.header["cal_max"] = -1000, 400
    nib.save(img, tmp_path / "ct.nii.gz")
    vol = read_volume(tmp_path / "ct.nii.gz")
    out = write_volume(tmp_path / "m.nii.gz", vol.array > 3, reference=vol, kind="mask")
    hdr = nib.load(out).header
    assert hdr.get_xyzt_units() == ("mm", "msec")
    assert (float(hdr["cal_min"]), float(hdr["cal_max"])) == (0.0, 1.0)


def test_write_source_space_array(tmp_path):
    affine = AFFINES_48[40]
    source = (_distinct() % 3 == 0).astype(np.uint8)
    vol = read_volume(_save(tmp_path / "ct.nii.gz", _distinct(), affine))
    out = write_volume(tmp_path / "m.nii.gz", source, reference=vol, kind="mask", space="source")
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), source)


def test_empty_mask_writes_all_zero(tmp_path):
    vol = volume_from_array(_distinct(), AFFINES_48[3])
    out = write_volume(tmp_path / "empty.nii.gz", np.zeros(vol.array.shape, bool), reference=vol,
                       kind="mask")
    assert not np.asanyarray(nib.load(out).dataobj).any()


def test_write_overwrites_existing_file_atomically(tmp_path):
    vol = volume_from_array(_distinct(), np.eye(4))
    target = tmp_path / "m.nii.gz"
    target.write_bytes(b"old")
    write_volume(target, vol.array > 5, reference=vol, kind="mask")
    assert read_volume(target, kind="mask").array.sum() == int((_distinct() > 5).sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz"]


def test_write_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    vol = volume_from_array(_distinct(), np.eye(4))

    def half_write_then_fail(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_volume(tmp_path / "m.nii.gz", vol.array > 5, reference=vol, kind="mask")
    assert list(tmp_path.iterdir()) == []


def test_write_failure_keeps_previous_file(tmp_path, monkeypatch):
    vol = volume_from_array(_distinct(), np.eye(4))
    target = tmp_path / "m.nii.gz"
    target.write_bytes(b"previous")
    monkeypatch.setattr(io.nib, "save", lambda img, f: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        write_volume(target, vol.array > 5, reference=vol, kind="mask")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_write_verification_failure_removes_file(tmp_path, monkeypatch):
    vol = volume_from_array(_distinct(), np.eye(4))
    real_save = nib.save

    def save_with_wrong_affine(img, filename):
        bad = nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([9.0, 9.0, 9.0, 1.0]))
        real_save(bad, filename)

    monkeypatch.setattr(io.nib, "save", save_with_wrong_affine)
    with pytest.raises(VolumeError, match=r"m\.nii\.gz.*source shape.*Received: shape"):
        write_volume(tmp_path / "m.nii.gz", vol.array > 5, reference=vol, kind="mask")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_generic_file_and_cleanup(tmp_path):
    out = atomic_write(tmp_path / "sub" / "summary.json", lambda p: p.write_text("{}"))
    assert out.read_text() == "{}"

    def fail(p):
        p.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(tmp_path / "sub" / "other.json", fail)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["summary.json"]


def test_atomic_write_rejects_non_callable(tmp_path):
    with pytest.raises(TypeError, match="write_fn"):
        atomic_write(tmp_path / "x.json", "not callable")


@pytest.mark.parametrize(
    ("kwargs", "array_fn", "match"),
    [
        ({"kind": "mask"}, lambda a: a.astype(np.float32) * 0.5, r"mask values in \{0, 1\}"),
        ({"kind": "probs"}, lambda a: a.astype(np.float32) * 2.0, r"probabilities in \[0, 1\].*max=2"),
        ({"kind": "probs"}, lambda a: np.full(a.shape, np.nan), r"finite.*8 non-finite"),
        ({"kind": "mask"}, lambda a: a[:1], r"Expected array of shape \(2, 2, 2\).*array.shape=\(1, 2, 2\)"),
        ({"kind": "probs", "dtype": np.float16}, lambda a: a, r"no float16.*dtype=float16"),
        ({"kind": "mask", "dtype": np.float32}, lambda a: a, r"kind='mask'.*dtype=float32"),
        ({"kind": "label"}, lambda a: a, r"kind=.label."),
        ({"kind": "mask", "space": "world"}, lambda a: a, r"space=.world."),
        ({"kind": "image", "dtype": np.int16}, lambda a: a + 0.5, r"int16.*min=0\.5"),
    ],
)
def test_write_bad_input(tmp_path, kwargs, array_fn, match):
    vol = volume_from_array(np.zeros((2, 2, 2), np.float32), np.eye(4), path="ref.nii.gz")
    array = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=np.uint8).reshape(2, 2, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        write_volume(tmp_path / "out.nii.gz", array_fn(array), reference=vol, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_write_bad_suffix_and_reference(tmp_path):
    vol = volume_from_array(np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz.*out\.npy"):
        write_volume(tmp_path / "out.npy", np.zeros((2, 2, 2)), reference=vol, kind="mask")
    with pytest.raises(TypeError, match="reference=ndarray"):
        write_volume(tmp_path / "o.nii", np.zeros((2, 2, 2)), reference=np.eye(4), kind="mask")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(VolumeError, match=r"existing NIfTI.*nope\.nii\.gz.*not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_wrong_suffix(tmp_path):
    (tmp_path / "scan.mgz").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"\.nii or \.nii\.gz.*scan\.mgz"):
        read_volume(tmp_path / "scan.mgz")


def test_corrupt_metaimage_is_read_through_segmentation_metaimage(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"MetaImage header.*scan\.mha"):
        read_volume(tmp_path / "scan.mha")


def test_path_of_wrong_type():
    with pytest.raises(TypeError, match="path=3"):
        read_volume(3)


def test_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="kind='probs'"):
        read_volume(tmp_path / "a.nii.gz", kind="probs")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(b"this is not gzip data at all" * 20)
    with pytest.raises(VolumeError, match=r"uncorrupted.*corrupt\.nii\.gz"):
        read_volume(path)


def test_truncated_gzip_data(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match=r"truncated\.nii\.gz"):
        read_volume(bad)


def test_truncated_uncompressed_data(tmp_path):
    good = _save(tmp_path / "good.nii", _distinct(), np.eye(4))
    bad = tmp_path / "short.nii"
    bad.write_bytes(good.read_bytes()[:400])
    with pytest.raises(VolumeError, match=r"short\.nii"):
        read_volume(bad)


def test_bad_gzip_crc(tmp_path):
    good = _save(tmp_path / "good.nii", _distinct(), np.eye(4))
    payload = bytearray(gzip.compress(good.read_bytes()))
    payload[-8] ^= 0xFF  # corrupt the CRC32 trailer
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(payload))
    with pytest.raises(VolumeError, match=r"crc\.nii\.gz"):
        read_volume(bad)


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(VolumeError, match=r"empty\.nii"):
        read_volume(tmp_path / "empty.nii")


def test_4d_with_several_volumes(tmp_path):
    path = _save(tmp_path / "dwi.nii.gz", np.zeros((3, 4, 5, 2), np.int16), np.eye(4))
    with pytest.raises(VolumeError, match=r"3D volume.*dwi\.nii\.gz.*shape=\(3, 4, 5, 2\)"):
        read_volume(path)


def test_2d_file(tmp_path):
    path = _save(tmp_path / "slice.nii.gz", np.zeros((3, 4), np.int16), np.eye(4))
    with pytest.raises(VolumeError, match=r"3D volume.*slice\.nii\.gz.*shape=\(3, 4\)"):
        read_volume(path)


def test_nan_voxels(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    path = _save(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(VolumeError, match=r"finite.*nan\.nii\.gz.*2 non-finite"):
        read_volume(path)


def test_nan_voxels_in_mask(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    path = _save(tmp_path / "nanmask.nii.gz", data, np.eye(4))
    with pytest.raises(VolumeError, match=r"nanmask\.nii\.gz.*1 non-finite"):
        read_volume(path, kind="mask")


def _save_raw_header(path: Path, array: np.ndarray, edit) -> Path:
    """Saves with a header edited after nibabel filled it (affine=None: kept as is)."""
    hdr = nib.Nifti1Image(array, np.eye(4)).header.copy()
    edit(hdr)
    nib.save(nib.Nifti1Image(array, None, header=hdr), path)
    return path


def _save_with_raw_pixdim(path: Path, pixdim_xyz, *, qform_code, sform_code) -> Path:
    """Writes pixdim[1:4] straight into the header bytes (nibabel would "fix" it)."""
    plain = path.with_name("plain.nii")
    _save_raw_header(plain, _distinct(), lambda h: h.__setitem__("qform_code", qform_code))
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    raw[80:92] = np.asarray(pixdim_xyz, dtype="<f4").tobytes()  # pixdim[1:4] at byte 80
    raw[254:256] = np.int16(sform_code).astype("<i2").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


def test_zero_pixdim(tmp_path):
    path = _save_with_raw_pixdim(tmp_path / "zero.nii.gz", (1.0, 0.0, 1.0), qform_code=0,
                                 sform_code=1)
    with pytest.raises(VolumeError, match=r"positive voxel sizes.*zero\.nii\.gz.*pixdim=\[1\.0, 0\.0, 1\.0\]"):
        read_volume(path)


def test_negative_pixdim(tmp_path):
    path = _save_with_raw_pixdim(tmp_path / "neg.nii", (1.0, -1.0, 1.0), qform_code=1,
                                 sform_code=1)
    with pytest.raises(VolumeError, match=r"neg\.nii.*pixdim=\[1\.0, -1\.0, 1\.0\]"):
        read_volume(path)


def test_singular_affine(tmp_path):
    def edit(hdr):
        hdr["srow_z"] = (0.0, 0.0, 0.0, 0.0)  # third voxel axis has no extent in the sform
        hdr["qform_code"], hdr["sform_code"] = 0, 1

    _save_raw_header(tmp_path / "flat.nii.gz", _distinct(), edit)
    with pytest.raises(VolumeError, match=r"non-singular affine.*flat\.nii\.gz"):
        read_volume(tmp_path / "flat.nii.gz")


def test_volume_from_array_bad_input():
    with pytest.raises(VolumeError, match=r"array \(no file\).*shape=\(2, 2\)"):
        volume_from_array(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(VolumeError, match=r"affine.shape=\(3, 3\)"):
        volume_from_array(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(VolumeError, match="non-singular"):
        volume_from_array(np.zeros((2, 2, 2)), np.zeros((4, 4)))
    with pytest.raises(VolumeError, match=r"1 non-finite"):
        volume_from_array(np.array([np.nan] + [0.0] * 7).reshape(2, 2, 2), np.eye(4))
    with pytest.raises(VolumeError, match=r"values=\[3\]"):
        volume_from_array(np.full((2, 2, 2), 3), np.eye(4), kind="mask")


# ---------------------------------------------------------------------------------------------
# check_pair
# ---------------------------------------------------------------------------------------------


def test_check_pair_accepts_matching_pair(tmp_path):
    affine = AFFINES_48[17]
    image = read_volume(_save(tmp_path / "img.nii.gz", _distinct(), affine))
    mask = read_volume(_save(tmp_path / "lbl.nii.gz", (_distinct() > 40).astype(np.uint8), affine),
                       kind="mask")
    checked = check_pair(image, mask)
    assert checked is mask


def test_check_pair_accepts_same_grid_stored_in_other_orientation(tmp_path):
    affine = AFFINES_48[0]
    image = read_volume(_save(tmp_path / "img.nii.gz", _distinct(), affine))
    flipped = affine @ np.array([[-1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    mask_source = (_distinct() > 40).astype(np.uint8)[::-1]
    mask = read_volume(_save(tmp_path / "lbl.nii.gz", mask_source, flipped), kind="mask")
    check_pair(image, mask)
    np.testing.assert_array_equal(mask.array, image.array > 40)


def test_check_pair_shape_mismatch(tmp_path):
    image = read_volume(_save(tmp_path / "img.nii.gz", _distinct(), np.eye(4)))
    mask = read_volume(_save(tmp_path / "lbl.nii.gz", np.zeros((3, 4, 6), np.uint8), np.eye(4)),
                       kind="mask")
    with pytest.raises(VolumeError, match=r"img\.nii\.gz.*lbl\.nii\.gz.*same shape.*\(3, 4, 5\).*\(3, 4, 6\)"):
        check_pair(image, mask)


def test_check_pair_affine_mismatch(tmp_path):
    image = read_volume(_save(tmp_path / "img.nii.gz", _distinct(), np.eye(4)))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    mask = read_volume(_save(tmp_path / "lbl.nii.gz", np.zeros(SHAPE, np.uint8), shifted),
                       kind="mask")
    with pytest.raises(VolumeError, match=r"img\.nii\.gz.*lbl\.nii\.gz.*affine.*0\.5 mm.*image source affine.*mask source affine"):
        check_pair(image, mask)
    assert check_pair(image, mask, atol_mm=0.6) is mask


def test_check_pair_tiny_rotation_accumulates_over_extent():
    shape = (200, 4, 4)
    image = volume_from_array(np.zeros(shape, np.float32), np.eye(4))
    angle = 2e-5  # rad: corners move 199 * 2e-5 = 4e-3 mm > 1e-3 mm
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    mask = volume_from_array(np.zeros(shape, np.uint8), rot, kind="mask")
    with pytest.raises(VolumeError, match="corners differ"):
        check_pair(image, mask)


def test_check_pair_labels_outside_binary(tmp_path):
    image = volume_from_array(_distinct(), np.eye(4), path="img.nii.gz")
    labels = np.zeros(SHAPE, np.int16)
    labels[0, 0, 0] = 2
    mask = volume_from_array(labels, np.eye(4), path="lbl.nii.gz", kind="image")
    with pytest.raises(VolumeError, match=r"lbl\.nii\.gz.*values=\[2\.0\].*img\.nii\.gz"):
        check_pair(image, mask)
    fixed = check_pair(image, mask, binarize=True)
    assert fixed.array.dtype == np.uint8 and fixed.array.max() == 1 and fixed.array.sum() == 1


def test_check_pair_type_errors():
    vol = volume_from_array(_distinct(), np.eye(4))
    with pytest.raises(TypeError, match="mask=ndarray"):
        check_pair(vol, np.zeros(SHAPE))
    with pytest.raises(ValueError, match="atol_mm=-1"):
        check_pair(vol, vol, atol_mm=-1)


def test_volume_is_frozen():
    vol = volume_from_array(_distinct(), np.eye(4))
    assert isinstance(vol, Volume)
    with pytest.raises(AttributeError):
        vol.path = Path("x")  # type: ignore[misc]
