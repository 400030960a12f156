"""Analytical and clinical validity report (``vigil validate``); see docs/validity.md."""
