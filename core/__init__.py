"""The platform's core: the feature contract, data I/O, the feature engines, settings, training
windows, state files and the model artifact. Every other package imports it; it imports none."""
