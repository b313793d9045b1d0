"""tiltxcorr-scipion: coarse tilt-series alignment by stretched cross-correlation.

The engine (``tiltxcorr_scipion.alignment``) is pure torch and needs no Scipion.
This module is also the Scipion plugin entry point (group ``pyworkflow.plugin``).
"""

__version__ = "0.1.0"

try:
    import pwem
except ImportError:  # the engine and the command line work without Scipion
    pwem = None

if pwem is not None:
    from . import _sqlite_fix

    _sqlite_fix.install()

    class Plugin(pwem.Plugin):
        """Scipion plugin: tiltxcorr coarse alignment in PyTorch (CPU or CUDA)."""

        _url = "https://github.com/tiltxcorr-scipion/tiltxcorr-scipion"
        _pathVars = []
        _supportedVersions = [__version__]

        @classmethod
        def _defineVariables(cls):
            # Nothing external to locate: the engine is a Python dependency.
            pass
