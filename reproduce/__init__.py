"""reproduce: the learning rate as a temperature, shown on the ResNet paper's CIFAR-10 curves."""
__version__ = "0.1.0"
