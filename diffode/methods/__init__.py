"""Methods: one folder each (a LightningModule + its builder), registered in registry.METHODS."""
