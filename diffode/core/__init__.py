"""The math of diffode: torch only (no Lightning, no Hydra)."""
