"""medgen: which learned representation and which synthetic data help a classifier on MedMNIST."""

__version__ = "0.1.0"
