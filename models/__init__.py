"""The AnyDoor LightningModule and pipeline; plain nn.Module parts live in models.components."""
