"""The protocol is discoverable where Scipion looks for it (no project needed)."""

from __future__ import annotations


def tree_paths(class_name: str) -> list[list[str]]:
    """Where Scipion's protocol tree (Tomography view) lists a protocol class: the texts
    from the section down to the protocol's own entry."""
    import pyworkflow as pw
    from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig

    tree = ProtocolTreeConfig.load(pw.Config.getDomain(), pw.Config.SCIPION_PROTOCOLS)
    found = []

    def walk(node, path):
        for child in node.childs:
            text, value = (getattr(child, a) for a in ("text", "value"))
            here = path + [str(text.get() if hasattr(text, "get") else text)]
            if class_name in str(value.get() if hasattr(value, "get") else value):
                found.append(here)
            walk(child, here)

    walk(tree["Tomography"], [])
    return found


def test_protocols_are_in_the_tomography_tree():
    assert ["Tilt-series", "Alignment", "tiltxcorr coarse prealignment"] in tree_paths(
        "ProtTiltxcorrPrealignment")
    assert ["Tilt-series", "Alignment", "tiltxcorr fiducial-less fine alignment"] in tree_paths(
        "ProtTiltxcorrFineAlignment")
    assert tree_paths("ProtTiltxcorrReconstruct") == [
        ["Tomogram", "Reconstruction", "tiltxcorr reconstruction"]]


def test_protocol_is_found_by_plugin_discovery():
    import pyworkflow as pw

    protocols = pw.Config.getDomain().getProtocols()
    assert "ProtTiltxcorrPrealignment" in protocols
    cls = protocols["ProtTiltxcorrPrealignment"]
    assert cls._label == "tiltxcorr coarse prealignment"
    assert set(cls._possibleOutputs) == {"TiltSeries", "FailedTiltSeries", "InterpolatedTiltSeries"}
    fine = protocols["ProtTiltxcorrFineAlignment"]
    assert fine._label == "tiltxcorr fiducial-less fine alignment"
    assert set(fine._possibleOutputs) == {"TiltSeries", "FailedTiltSeries", "LandmarkModels",
                                          "LandmarkTiltSeries"}


def test_form_parameters_keep_their_contract_names():
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment

    prot = ProtTiltxcorrPrealignment()
    names = {name for name, _ in prot._definition.iterAllParams()}
    expected = {"inputSetOfTiltSeries", "tiltAxisAngle", "lowPassCutoff", "lowPassSigma",
                "highPassSigma", "highPassRadius", "cumulativeCorrelation", "binning",
                "subpixelRefinement", "taperFraction", "padFraction", "maxShift",
                "writeAlignedStacks", "alignedBinning", "useGpu", "gpuList", "numberOfThreads",
                "fixedPattern", "disableUnusableViews", "adaptive", "angleOffset",
                "absoluteCosineStretch", "pxTrim", "xmin", "xmax", "ymin", "ymax"}
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


def test_fine_form_parameters():
    from tiltxcorr_scipion.options import FineOptions
    from tiltxcorr_scipion.protocols import ProtTiltxcorrFineAlignment
    from tiltxcorr_scipion.protocols.protocol_fine import FORM_PARAMS, fine_options_from_form

    prot = ProtTiltxcorrFineAlignment()
    names = {name for name, _ in prot._definition.iterAllParams()}
    assert set(FORM_PARAMS) | {"inputSetOfTiltSeries", "tiltAxisAngle"} <= names
    defaults = fine_options_from_form({name: prot.getAttributeValue(name) for name in FORM_PARAMS})
    assert defaults == FineOptions()  # a new form offers the engine's defaults
    chosen = fine_options_from_form({"patchSize": "200 100", "axisOption": 2, "axisGroupSize": 4,
                                     "solveMagnification": True, "levelSpecimen": False})
    assert chosen.size_of_patches == (100, 200)  # form X Y -> engine (rows, cols)
    assert chosen.rotation_group_size == 4 and chosen.magnification_group_size == 1
    assert chosen.level_specimen is False


def test_reconstruction_is_found_and_keeps_its_contract_names():
    import pyworkflow as pw

    protocols = pw.Config.getDomain().getProtocols()
    cls = protocols["ProtTiltxcorrReconstruct"]
    assert cls._label == "tiltxcorr reconstruction"
    assert set(cls._possibleOutputs) == {"Tomograms", "FailedTiltSeries"}
    prot = cls()
    names = {name for name, _ in prot._definition.iterAllParams()}
    assert {"inputSetOfTiltSeries", "tiltAxisAngle", "thickness", "binning", "zShift",
            "tiltAngleOffset", "radialCutoff", "radialFalloff", "fakeSirtIterations", "useGpu",
            "gpuList", "numberOfThreads"} <= names
    assert prot.thickness.get() == 300 and prot.binning.get() == 1
    assert prot.radialCutoff.get() == 0.35 and prot.radialFalloff.get() == 0.035


def test_both_alignment_forms_offer_the_preview_on_by_default():
    from tiltxcorr_scipion.protocols import ProtTiltxcorrFineAlignment, ProtTiltxcorrPrealignment

    for cls in (ProtTiltxcorrPrealignment, ProtTiltxcorrFineAlignment):
        prot = cls()
        assert prot.previewTomogram.get() is True, cls
        assert prot.previewThickness.get() is None, cls
        assert prot._definition.getParam("previewThickness").isExpert()
