"""Diffeomorphic registration of a new study to the patient's prior (issue 19)."""
