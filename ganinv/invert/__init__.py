"""The parts of invert.py's driver (:mod:`ganinv.inversion`): ``settings`` (the check of every
top-level value), ``inputs`` (the input walk and each file's loading), ``run`` (the networks and one
batch's inversion), ``results`` (scores, files, grid, summary). Driver level: they may import
anything below (runner, methods, ...); only :mod:`ganinv.inversion` imports them."""
