"""The protocol is discoverable where Scipion looks for it (no project needed)."""

from __future__ import annotations


def test_protocol_is_in_the_tomography_tree_under_tilt_series_alignment():
    import pyworkflow as pw
    from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig

    tree = ProtocolTreeConfig.load(pw.Config.getDomain(), pw.Config.SCIPION_PROTOCOLS)
    found = []

    def walk(node, path):
        for child in node.childs:
            text, value = (getattr(child, a) for a in ("text", "value"))
            here = path + [str(text.get() if hasattr(text, "get") else text)]
            if "ProtTiltxcorrPrealignment" in str(value.get() if hasattr(value, "get") else value):
                found.append(here)
            walk(child, here)

    walk(tree["Tomography"], [])
    assert ["Tilt-series", "Alignment", "tiltxcorr coarse prealignment"] in found


def test_protocol_is_found_by_plugin_discovery():
    import pyworkflow as pw

    protocols = pw.Config.getDomain().getProtocols()
    assert "ProtTiltxcorrPrealignment" in protocols
    cls = protocols["ProtTiltxcorrPrealignment"]
    assert cls._label == "tiltxcorr coarse prealignment"
    assert set(cls._possibleOutputs) == {"TiltSeries", "FailedTiltSeries", "InterpolatedTiltSeries"}


def test_form_parameters_keep_their_contract_names():
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment

    prot = ProtTiltxcorrPrealignment()
    names = {name for name, _ in prot._definition.iterAllParams()}
    expected = {"inputSetOfTiltSeries", "tiltAxisAngle", "lowPassCutoff", "lowPassSigma",
                "highPassSigma", "highPassRadius", "cumulativeCorrelation", "binning",
                "subpixelRefinement", "taperFraction", "padFraction", "maxShift",
                "writeAlignedStacks", "alignedBinning", "useGpu", "gpuList", "numberOfThreads"}
    assert expected <= names
    assert prot.tiltAxisAngle.get() is None and prot.maxShift.get() is None
    assert prot.lowPassCutoff.get() == 0.25 and prot.binning.get() == 0
    assert prot._definition.getParam("taperFraction").isExpert()


def test_bibtex_has_the_cited_keys():
    from pyworkflow.utils import parseBibTex

    from tiltxcorr_scipion import bibtex
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment

    refs = parseBibTex(bibtex.__doc__)
    for key in ProtTiltxcorrPrealignment()._citations():
        assert key in refs and refs[key]["doi"]
