"""Names shared by the protocol, the viewer, the templates and the tests."""

# Output attribute names of ProtTiltxcorrPrealignment...
OUTPUT_TILT_SERIES = "TiltSeries"
OUTPUT_FAILED_TILT_SERIES = "FailedTiltSeries"
OUTPUT_INTERPOLATED_TILT_SERIES = "InterpolatedTiltSeries"
# ...and of ProtTiltxcorrFineAlignment (with TiltSeries and FailedTiltSeries).
OUTPUT_LANDMARK_MODELS = "LandmarkModels"
# ...the tilt series the landmark models describe, as the input had them (earlier alignment
# included): the frame of the landmarks, exactly the series that have a model.
OUTPUT_LANDMARK_TILT_SERIES = "LandmarkTiltSeries"
# ...and of ProtTiltxcorrReconstruct (with FailedTiltSeries): the name scipion-em-imod's
# reconstruction gives its SetOfTomograms.
OUTPUT_TOMOGRAMS = "Tomograms"

# Attribute stored on every output tilt image: the normalised cross-correlation
# (-1..1) of the view with the one it was aligned to; unset (None) for the
# reference view and for disabled views.
CORRELATION_ATTR = "_tiltxcorrCorrelation"

# Attribute stored on every output tilt image: why the engine found the view
# unusable (blocked, dark, blank), or unset (None) for usable views.
UNUSABLE_ATTR = "_tiltxcorrUnusable"

# Attribute stored on every output tilt image: the self-check's held-out residual of
# the view in pixels (the median misfit of its links to its nearest views in tilt),
# unset (None) where not measured.
RESIDUAL_ATTR = "_tiltxcorrResidual"

# Attribute stored on every output tilt image when the alignment protocol made a preview
# tomogram: the reprojection check's residual of the view in pixels of the tilt series
# (the shift between the view and the projection, at its geometry, of a tomogram
# reconstructed without it), unset (None) for disabled views or without a preview.
REPROJECTION_ATTR = "_tiltxcorrReprojection"

# Attribute stored on an output tilt series kept although the self-check found no
# self-consistent alignment ("Keep unreliable tilt series" = Yes): why; unset otherwise.
UNRELIABLE_ATTR = "_tiltxcorrUnreliable"

# Files written per tilt series in the protocol's extra/ folder.
PLOT_SUFFIX = "_alignment.png"
ALIGNED_STACK_SUFFIX = ".ali"

# Citation keys in bibtex.py.
CITE_KREMER_1996 = "Kremer1996"
CITE_MASTRONARDE_2017 = "Mastronarde2017"

# Tilt limit for cosine stretching (IMOD tiltxcorr refuses larger |tilt|).
MAX_TILT_DEG = 82.0

# Streaming: seconds between two looks at an open input set.
STREAM_POLL_SECONDS = 3.0
