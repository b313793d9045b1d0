"""The command line and the protocol form offer the engine's own defaults.

All three take them from `tiltxcorr_scipion.options`; these tests check that
what a user actually gets from ``--help``-less runs and from a new form is
`CoarseOptions()`.
"""

from tiltxcorr_scipion.cli import OPTION_FLAGS, build_parser
from tiltxcorr_scipion.options import CoarseOptions


def test_command_line_defaults_are_the_engines():
    args = build_parser().parse_args(["align", "stack.mrc", "--axis", "85"])
    defaults = CoarseOptions()
    for option in OPTION_FLAGS:
        assert getattr(args, option) == getattr(defaults, option), option


def test_form_defaults_are_the_engines():
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment
    from tiltxcorr_scipion.protocols.protocol_prealignment import (
        FORM_OPTIONS,
        coarse_options_from_form,
    )

    form = ProtTiltxcorrPrealignment()  # a new protocol holds its form's defaults
    values = {param: form.getAttributeValue(param) for param in FORM_OPTIONS}
    assert values["binning"] == 0  # the form's "automatic"
    assert coarse_options_from_form(values) == CoarseOptions()
