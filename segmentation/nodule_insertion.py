"""Lesion copy-paste and synthetic nodules on the patches of a `PatchSampler`.

`with_nodule_insertion` wraps the training sampler when ``augment.lesion_paste`` or
``augment.synthetic_nodules`` is enabled (and ``augment.enabled``): sample ``i`` is the
sampler's patch ``i`` with lesions pasted (`segmentation.lesion_paste`) and then synthetic
nodules painted (`segmentation.synthetic_nodules`) into its lung region. Each of the two
draws from its own generator seeded with ``SeedSequence([seed, i, stream])`` (the sampler's
seed), so sample ``i`` stays a pure function of ``(seed, i)``: identical in every run, in any
order, and after a resume. The flips, rotations and intensity changes of
`segmentation.augmentation` come afterwards, as before.

At preparation time, per training case: the lung region (`segmentation.lungmask.lung_region`
on the preprocessed image, the -400 HU threshold brought through the config's normalisation,
without the closing that takes back juxtapleural indents) is computed once and cached beside
the preprocessed case (``{case}_lung_v1.npy``; read as a memmap, only inside each patch), and
the lesion bank is cut. HU levels (the subsolid
threshold, the jitter and the nodules' contrast) are converted through the preprocessing
normalisation (`segmentation.preprocessing.normalised_level`), never hard-coded in normalised
units.

Bad input, warned about and skipped (training goes on): cases without a lung region (no
lung-sized air component: `lung_region` returns the whole volume) get no insertion; a
dataset without any lesion that can be cut (none, or all at the volume border) gets no
paste; 2D / 2.5D patches get neither (3D only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.alignment import add_channel_axis
from segmentation.io import atomic_write
from segmentation.lesion_paste import BankLesion, LesionPasteSpec, build_lesion_bank, paste_lesions
from segmentation.lungmask import LUNG_AIR_HU, lung_region
from segmentation.preprocessing import PARENCHYMA_BELOW_HU, normalised_level
from segmentation.sampling import _names, _read_box
from segmentation.synthetic_nodules import SyntheticNoduleSpec, insert_nodules

__all__ = ["IntensityLevels", "intensity_levels", "case_lung_regions", "NoduleInsertionSampler",
           "with_nodule_insertion"]

logger = logging.getLogger(__name__)

_PASTE_STREAM = 0x50415354  # "PAST": separates the paste's generator from the sampler's
_SYNTHETIC_STREAM = 0x53594E54  # "SYNT"
_LUNG_CACHE_SUFFIX = "_lung_v1.npy"
# No closing: inserts need the parenchyma, not the juxtapleural indents the closing takes back
# (the region shrinks by about 1 %, and costs 0.5 s instead of 3 s per 192 x 192 x 120 case).
_LUNG_CLOSING_MM = 0.0


class IntensityLevels:
    """HU levels in the preprocessed (normalised) units of one `PreprocessSpec`.

    Each level is the value that a voxel of that HU holds in the normalised float32 image
    (`segmentation.preprocessing.normalised_level` with ``dtype=np.float32``).

    Attributes:
        lung_air: The lung-region threshold (-400 HU).
        parenchyma: Lung voxels below this (-500 HU) are parenchyma.
        subsolid: ``lesion_paste.subsolid_below_hu``.
        units_per_hu: Normalised units per HU between -850 HU and 50 HU (linear there for
            the HU window and the z-score unless a window clips inside that range).
        value_range: Normalised -1024 and 3071 HU: the values the normalisation can produce.
    """

    def __init__(self, preprocess: Any, *, subsolid_below_hu: float) -> None:
        def level(value_hu: float) -> float:
            return normalised_level(value_hu, spec=preprocess, dtype=np.float32)

        self.lung_air = level(LUNG_AIR_HU)
        self.parenchyma = level(PARENCHYMA_BELOW_HU)
        self.subsolid = level(subsolid_below_hu)
        self.units_per_hu = (level(50.0) - level(-850.0)) / 900.0
        self.value_range = (level(-1024.0), level(3071.0))  # what the normalisation can produce
        if not self.units_per_hu > 0:
            raise ValueError(
                "Expected a normalisation that increases between -850 and 50 HU. "
                f"Received: normalised(-850 HU)={level(-850.0)}, normalised(50 HU)={level(50.0)}")


def intensity_levels(preprocess: Any, *, subsolid_below_hu: float = -300.0) -> IntensityLevels:
    """`IntensityLevels` of a `segmentation.preprocessing.PreprocessSpec`."""
    return IntensityLevels(preprocess, subsolid_below_hu=subsolid_below_hu)


def _lung_path(cache_dir: Path, case_id: str) -> Path:
    return Path(cache_dir) / f"{case_id}{_LUNG_CACHE_SUFFIX}"


def _compute_lung(case: Any, threshold: float) -> np.ndarray:
    spacing = tuple(getattr(case, "spacing_mm", None) or (1.0, 1.0, 1.0))
    return lung_region(np.asarray(case.image), spacing_mm=spacing, threshold=threshold,
                       closing_mm=_LUNG_CLOSING_MM)


def case_lung_regions(cases: Sequence[Any], *, threshold: float,
                      cache_dir: str | Path | None = None) -> list[np.ndarray | None]:
    """The lung region of each case (bool (I, J, K)), or None where it has none.

    Args:
        cases: Objects with ``.case_id``, ``.image`` (I, J, K) and ``.spacing_mm`` (1 mm
            when missing).
        threshold: Air-like level in the image's units (the normalised -400 HU).
        cache_dir: Where ``{case}_lung_v1.npy`` is cached (read back as a memmap); None
            computes in memory. The cache folder must be specific to the preprocessing
            (as the training cache's hashed folder is).

    Returns:
        One entry per case. None for a case whose region is empty or the whole volume
        (`lung_region`'s answer when it finds no lung-sized air component).
    """
    regions: list[np.ndarray | None] = []
    for case in cases:
        path = None if cache_dir is None else _lung_path(Path(cache_dir), str(case.case_id))
        region = None
        if path is not None and path.is_file():
            try:
                region = np.load(path, mmap_mode="r")
                if region.shape != tuple(case.image.shape) or region.dtype != np.uint8:
                    region = None
            except (OSError, ValueError):
                region = None
        if region is None:
            region = _compute_lung(case, threshold).astype(np.uint8)
            if path is not None:
                atomic_write(path, lambda tmp, data=region: np.save(tmp, data, allow_pickle=False))
                region = np.load(path, mmap_mode="r")
        inside = int(np.count_nonzero(region))
        regions.append(None if inside in (0, region.size) else region)
    return regions


class NoduleInsertionSampler:
    """A `PatchSampler` whose 3D patches get pasted lesions and synthetic nodules.

    Every attribute other than ``sample`` is the wrapped sampler's (``locate``,
    ``extract``, ``image_shape``, ``summary`` ...).

    Args:
        sampler: The wrapped `segmentation.sampling.PatchSampler` (3D patches).
        lungs: Per case of ``sampler.cases``: bool/uint8 (I, J, K) lung region or None.
        bank: Lesion bank (empty: no paste).
        paste: Lesion paste settings (``enabled`` False: no paste).
        synthetic: Synthetic nodule settings (``enabled`` False: none).
        levels: HU levels in normalised units.
    """

    def __init__(self, sampler: Any, *, lungs: Sequence[np.ndarray | None], bank: Sequence[BankLesion],
                 paste: LesionPasteSpec, synthetic: SyntheticNoduleSpec, levels: IntensityLevels) -> None:
        if len(sampler.patch_size) != 3:
            raise ValueError(f"Expected a sampler of 3D patches. Received: patch_size={sampler.patch_size}")
        if len(lungs) != len(sampler.cases):
            raise ValueError(f"Expected one lung region per case ({len(sampler.cases)}). Received: {len(lungs)}")
        self.sampler = sampler
        self.lungs = tuple(lungs)
        self.bank = tuple(bank)
        self.paste = paste
        self.synthetic = synthetic
        self.levels = levels

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.sampler.seed, index, stream]))

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` (pure function of ``(seed, index)``): ``(image (*patch, 1), mask (*patch, 1))``."""
        location = self.sampler.locate(index)
        image, mask = self.sampler.extract(location)
        lung = self.lungs[location.case_index]
        if lung is None:
            return image, mask
        do_paste = bool(self.bank) and self.paste.enabled
        paste_rng = self._rng(location.index, _PASTE_STREAM)
        do_paste = do_paste and paste_rng.random() < self.paste.probability
        synth_rng = self._rng(location.index, _SYNTHETIC_STREAM)
        do_synth = self.synthetic.enabled and synth_rng.random() < self.synthetic.probability
        if not (do_paste or do_synth):
            return image, mask
        lung_patch = _read_box(lung, location.start, self.sampler.patch_size, fill=0, dtype=np.uint8) > 0
        img, msk = image[..., 0], mask[..., 0]
        if do_paste:
            img, msk, _ = paste_lesions(img, msk, lung_patch, bank=self.bank, case_id=location.case_id,
                                        spec=self.paste, rng=paste_rng, units_per_hu=self.levels.units_per_hu,
                                        value_range=self.levels.value_range)
        if do_synth:
            case = self.sampler.cases[location.case_index]
            spacing = tuple(getattr(case, "spacing_mm", None) or (1.0, 1.0, 1.0))
            img, msk, _ = insert_nodules(img, msk, lung_patch, spec=self.synthetic, rng=synth_rng,
                                         spacing_mm=spacing, units_per_hu=self.levels.units_per_hu,
                                         parenchyma_level=self.levels.parenchyma)
        return add_channel_axis(img).astype(np.float32), add_channel_axis(msk).astype(np.uint8)


def with_nodule_insertion(sampler: Any, *, augment: Any, preprocess: Any,
                          cache_dir: str | Path | None = None) -> Any:
    """Wraps ``sampler`` when lesion paste or synthetic nodules are enabled; else returns it.

    Args:
        sampler: The training `PatchSampler`.
        augment: The ``augment`` config section (`AugmentSpec`, with ``lesion_paste`` and
            ``synthetic_nodules``).
        preprocess: The resolved `PreprocessSpec` (``ct_stats`` filled in for ct_zscore).
        cache_dir: The preprocessed cases' folder (lung regions are cached there).

    Returns:
        A `NoduleInsertionSampler`, or ``sampler`` itself when nothing is enabled or
        nothing can be inserted (warned, naming the cases).
    """
    paste, synthetic = augment.lesion_paste, augment.synthetic_nodules
    if not augment.enabled or not (paste.enabled or synthetic.enabled):
        return sampler
    if len(sampler.patch_size) != 3:
        logger.warning("augment.lesion_paste / augment.synthetic_nodules need 3D patches; training goes on "
                       "without them (train.patch_size=%s).", list(sampler.patch_size))
        return sampler
    levels = intensity_levels(preprocess, subsolid_below_hu=paste.subsolid_below_hu)
    ids = [str(case.case_id) for case in sampler.cases]
    lungs = case_lung_regions(sampler.cases, threshold=levels.lung_air, cache_dir=cache_dir)
    no_lung = [case_id for case_id, lung in zip(ids, lungs) if lung is None]
    if no_lung:
        logger.warning("%d training case(s) have no lung region (no lung-sized air below -400 HU); their "
                       "patches get no pasted or synthetic nodule: %s", len(no_lung), _names(no_lung))
    if len(no_lung) == len(ids):
        logger.warning("No training case has a lung region: training goes on without lesion paste and "
                       "synthetic nodules.")
        return sampler
    bank: list[BankLesion] = []
    if paste.enabled:
        bank = build_lesion_bank(sampler.cases, sampler.lesions, edge_vox=paste.edge_vox,
                                 subsolid_level=levels.subsolid)
        if not bank:
            logger.warning("augment.lesion_paste: no lesion to paste in the training cases (none, or all at "
                           "the volume border); training goes on without pasting: %s", _names(ids))
        elif len({lesion.case_id for lesion in bank}) == 1:
            logger.warning("augment.lesion_paste: every pastable lesion is in case %r, so its own patches get "
                           "none (lesions are pasted into other cases only).", bank[0].case_id)
    if not bank and not synthetic.enabled:
        return sampler
    logger.info("Nodule insertion: %d lesions in the paste bank (%d subsolid), synthetic nodules %s.",
                len(bank), sum(lesion.subsolid for lesion in bank), "on" if synthetic.enabled else "off")
    return NoduleInsertionSampler(sampler, lungs=lungs, bank=bank, paste=paste, synthetic=synthetic,
                                  levels=levels)
