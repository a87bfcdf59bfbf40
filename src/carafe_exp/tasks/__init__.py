"""LightningModules: one per task, owning loss, optimiser, schedule and metrics."""
