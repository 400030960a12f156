"""Low-dose CT: a physical dose simulator and a Poisson-aware denoiser (issue 19)."""
