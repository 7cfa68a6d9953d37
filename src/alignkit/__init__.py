"""alignkit: align a fine-tuned language model with preference data, on the hardware you have."""

__version__ = "0.1.0"
