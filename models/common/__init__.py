"""What every model family shares: provenance, tensor specs, Triton configuration,
TorchScript parity checks, the one export path and the Python-backend wrapper."""
