"""Whole-model weights from other trainings: ``model.weights=<file or directory>``.

:func:`load_model_weights` recognises the format of the file or directory it is given (our own runs and
checkpoints, and each reference implementation's checkpoints: one module of this package per format),
converts its tensors to our parameter names and loads them strictly (see :mod:`.converted`).
"""

from carafe_exp.models.weight_import.converted import ConvertedWeights, load_strictly
from carafe_exp.models.weight_import.load import load_model_weights, weight_formats

__all__ = ["ConvertedWeights", "load_model_weights", "load_strictly", "weight_formats"]
