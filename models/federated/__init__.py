"""Federated training of the step model over simulated sites (Flower SecAgg+); see
docs/federated.md."""
