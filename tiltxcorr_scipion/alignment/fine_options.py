"""Default settings of the fiducial-less fine alignment, in one place and free of torch.

`track_patches`, `solve_geometry` and `fiducialless_alignment` take these as
keyword-only arguments; their defaults are read from `FINE_DEFAULTS`, so a
value changed here changes every entry point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FineOptions:
    """Settings of patch tracking and of the geometry solve, with their defaults.

    Tracking (IMOD tiltxcorr's patch tracking; IMOD option names in brackets)
    -------------------------------------------------------------------------
    size_of_patches
        Patch size in input pixels, one number or `(rows, cols)`
        [SizeOfPatchesXandY, given there as X, Y]. None: an eighth of the
        smaller binned image side, at least 48 binned pixels.
    overlap_of_patches
        Minimum fractional overlap between neighbouring patches, which sets
        their number [OverlapOfPatchesXandY].
    number_of_patches
        `(rows, cols)` number of patches, instead of the overlap
        [NumberOfPatchesXandY].
    borders
        Input pixels left out at each image edge when laying out the patches
        [BordersInXandY].
    iterations
        Correlations per patch and view: each one after the first re-samples
        the patch where the previous one put it [IterateCorrelations].
    length_and_overlap
        `(length, overlap)`: contours longer than `length` views are cut into
        pieces of `length` views overlapping by at least `overlap`; None keeps
        whole contours [LengthAndOverlap; imodchopconts].
    min_contour_length
        Shorter contours (pieces) are dropped: a 3-D point needs views.
    min_relative_score
        A track ends where its correlation coefficient falls below this
        fraction of the median over the patches of the same view pair.
    max_jump
        A track ends where it moves more than this fraction of the patch size
        away from the median motion of the patches of the same view pair.
    min_contrast
        A patch is blank where its filtered standard deviation is below this
        fraction of that of the typical (90th percentile) patch of the
        reference view; blank patches are not tracked.
    low_pass_cutoff, low_pass_sigma, high_pass_sigma
        IMOD's correlation filter (-radius2, -sigma2, -sigma1) in cycles per
        binned pixel.
    taper_fraction, pad_fraction
        Edge taper and zero padding of each patch, as fractions of its size.
    binning
        Tracking binning: ``"auto"`` (the larger side at most 640 pixels) or a
        factor. Positions are always returned in input pixels.
    interpolation
        ``"bilinear"`` or ``"bicubic"`` resampling of the stretched patches.

    Geometry solve (IMOD tiltalign's model)
    ---------------------------------------
    rotation_group_size
        None: one tilt axis angle for the series. k >= 1: an in-plane rotation
        for each group of k views adjacent in tilt (1: every view) [RotOption].
    magnification_group_size
        None: all views at the same magnification; k >= 1: one magnification
        per group of k views, the reference view's group fixed at 1 [MagOption].
    tilt_group_size
        None: tilt angles stay nominal (only the common offset is found).
        k >= 1: one tilt change per group of k views, the reference view's
        group fixed [TiltOption].
    solve_axis
        Refine the tilt axis angle (False keeps the nominal one).
    robust
        Down-weight points and whole tracks with outlying residuals (Tukey's
        biweight, as tiltalign's RobustFitting and WeightWholeTracks).
    robust_k
        Tukey's constant in robust scale units (tiltalign's default 4.685);
        smaller values down-weight more points.
    max_iterations
        Levenberg-Marquardt iterations per fit.

    Whole pipeline
    --------------
    passes
        Track and solve this many times; each pass after the first tracks
        again with the refined axis, tilts and shifts.
    """

    size_of_patches: int | tuple[int, int] | None = None
    overlap_of_patches: float = 0.33
    number_of_patches: tuple[int, int] | None = None
    borders: int = 0
    iterations: int = 3
    length_and_overlap: tuple[int, int] | None = (16, 4)
    min_contour_length: int = 4
    min_relative_score: float = 0.4
    max_jump: float = 0.1
    min_contrast: float = 0.25
    low_pass_cutoff: float = 0.125
    low_pass_sigma: float = 0.03
    high_pass_sigma: float = 0.03
    taper_fraction: float = 0.15
    pad_fraction: float = 0.05
    binning: int | str = "auto"
    interpolation: str = "bilinear"

    rotation_group_size: int | None = None
    magnification_group_size: int | None = None
    tilt_group_size: int | None = None
    solve_axis: bool = True
    robust: bool = True
    robust_k: float = 4.685
    max_iterations: int = 50

    passes: int = 2


FINE_DEFAULTS = FineOptions()
