"""Models built from torchvision components with swappable resampling sites."""
