"""A TorchServe handler that serves any PyTorch image-classification checkpoint.

Importing this package has no side effects; the handler entry point is
`handlers.image_classifier.ImageClassifier`.
"""
