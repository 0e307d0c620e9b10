"""tsctl: a small command line for TorchServe's inference and management APIs, tokens handled."""
