"""The built-in drift detectors, one module each; importing this package registers them.

Adding a detector: a module here with a :class:`~controller.drift.base.Detector` subclass decorated with
``@register_detector(name)``, and its name in :data:`BUILTIN`. The order of :data:`BUILTIN` is the order the
watch feeds the detectors, so the one reported when several alarm on the same kind of drift in one window.
"""

from importlib import import_module

BUILTIN = ("page_hinkley", "adwin", "psi", "ks", "wasserstein", "mean_shift")

for _module in BUILTIN:
    import_module(f"{__name__}.{_module}")
