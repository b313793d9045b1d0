"""The command line and the protocol form offer the engine's own defaults.

They keep literal copies (so that --help and plugin discovery need not import
torch); this test keeps the copies true.
"""

from dataclasses import fields

from tiltxcorr_scipion.cli import build_parser
from tiltxcorr_scipion.convert.engine_args import FORM_DEFAULTS, engine_kwargs_from_form
from tiltxcorr_scipion.options import CoarseOptions

ENGINE = {field.name: field.default for field in fields(CoarseOptions)}

CLI_TO_ENGINE = {
    "low_pass": "low_pass_cutoff", "low_pass_sigma": "low_pass_sigma",
    "high_pass_sigma": "high_pass_sigma", "high_pass_radius": "high_pass_radius",
    "taper": "taper_fraction", "pad": "pad_fraction", "binning": "binning",
    "cumulative": "cumulative", "refine": "refine", "max_shift": "max_shift",
    "interpolation": "interpolation",
}


def test_command_line_defaults_are_the_engines():
    args = build_parser().parse_args(["align", "stack.mrc", "--axis", "85"])
    for cli_name, engine_name in CLI_TO_ENGINE.items():
        assert getattr(args, cli_name) == ENGINE[engine_name], cli_name


def test_form_defaults_are_the_engines():
    kwargs = engine_kwargs_from_form(FORM_DEFAULTS)
    for name, value in kwargs.items():
        expected = ENGINE[name]
        if name == "binning":  # the form's 0 means automatic
            assert value in (expected, 0), name
        else:
            assert value == expected, name
