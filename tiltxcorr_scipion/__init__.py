"""tiltxcorr-scipion: tilt-series alignment by stretched cross-correlation, in PyTorch.

The engine (``tiltxcorr_scipion.alignment``) is pure torch: importing it loads
no Scipion module. This package is also the Scipion plugin (entry point group
``pyworkflow.plugin``): Scipion's discovery reads ``tiltxcorr_scipion.Plugin``,
which loads the Scipion side (``_plugin``) only then.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Loaded on first use so that `import tiltxcorr_scipion.alignment` stays free of
    # pyworkflow and pwem; Scipion asks for Plugin right after importing the package.
    if name == "Plugin":
        from ._plugin import Plugin

        return Plugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
