# ruff: noqa: E501
"""
@article{Kremer1996,
title = {Computer visualization of three-dimensional image data using IMOD},
journal = {Journal of Structural Biology},
volume = {116},
number = {1},
pages = {71-76},
year = {1996},
issn = {1047-8477},
doi = {10.1006/jsbi.1996.0013},
url = {https://doi.org/10.1006/jsbi.1996.0013},
author = {James R. Kremer and David N. Mastronarde and J. Richard McIntosh},
}

@article{Mastronarde2017,
title = {Automated tilt series alignment and tomographic reconstruction in IMOD},
journal = {Journal of Structural Biology},
volume = {197},
number = {2},
pages = {102-113},
year = {2017},
issn = {1047-8477},
doi = {10.1016/j.jsb.2016.07.011},
url = {https://doi.org/10.1016/j.jsb.2016.07.011},
author = {David N. Mastronarde and Susannah R. Held},
}
"""
