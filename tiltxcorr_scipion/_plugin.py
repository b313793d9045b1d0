"""The Scipion plugin class; importing it applies the sqlite fix (`_sqlite_fix`).

Scipion's plugin discovery instantiates ``tiltxcorr_scipion.Plugin`` in every
Scipion process (the protocol subprocesses too), so the fix is active wherever
the plugin is installed. The protocols, viewers and wizards import this module
as well, for processes that load them without discovery.
"""

import pwem

from . import __version__, _sqlite_fix

_sqlite_fix.install()


class Plugin(pwem.Plugin):
    """Scipion plugin: tiltxcorr alignment in PyTorch (CPU or CUDA)."""

    _url = "https://github.com/tiltxcorr-scipion/tiltxcorr-scipion"
    _pathVars = []
    _supportedVersions = [__version__]

    @classmethod
    def _defineVariables(cls):
        # Nothing external to locate: the engine is a Python dependency.
        pass


# pyworkflow names a plugin, and finds its folder (templates...), by the Plugin
# class's module: it must be the package, where Scipion's discovery found it.
Plugin.__module__ = __package__
