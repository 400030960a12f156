"""Readers for the public data sets Vigil trains and evaluates on (torch-free).

They sit above :mod:`streams.core` (they reuse its code table and feature layout) and
below :mod:`models` and the rest of :mod:`streams`, which both read them.
"""
