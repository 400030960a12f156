"""Out-of-distribution detection for the deterioration models: the window detector
served as ``ood`` and the step detector built into ``deterioration_step``."""
