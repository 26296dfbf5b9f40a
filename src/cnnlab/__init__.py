"""cnnlab: compare CNN building blocks on CIFAR-10, and train Siamese face verifiers."""

__version__ = "0.1.0"
