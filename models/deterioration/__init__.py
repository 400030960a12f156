"""The deterioration risk models: the window model (``deterioration``,
``deterioration_explain``), the step model (``deterioration_step``), their image branch,
and the tools that choose and check the alert operating point."""
