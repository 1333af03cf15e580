"""cifartune: train ResNet-style CIFAR-10 classifiers fast and tune their hyperparameters."""

__version__ = "0.1.0"
