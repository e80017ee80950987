"""The Classical Tibetan / generated speech / English benchmark: corpus, encoders, command."""
