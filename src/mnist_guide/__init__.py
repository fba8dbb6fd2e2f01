"""mnist-guide: the helpers the course's notebooks import, from data to a deployed model."""

__version__ = "0.1.0"
