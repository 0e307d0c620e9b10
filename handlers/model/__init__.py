"""The model path: artifact formats -> nn.Module in eval mode on a device; the recipe; the engine."""
