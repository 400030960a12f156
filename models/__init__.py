"""Vigil's models: training, export to Triton, and model cards, one package per family.

- :mod:`models.common`: what every family shares (provenance, tensor specs, Triton
  configuration, TorchScript parity, the export path, the Python-backend wrapper).
- :mod:`models.deterioration`: the window and step risk models and their alert tools.
- :mod:`models.ood`: the out-of-distribution detectors of both risk models.
- :mod:`models.imaging`: the CT/X-ray segmentation and classification network.
- :mod:`models.cli`: the ``vigil train`` and ``vigil export`` commands.
"""
