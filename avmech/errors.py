"""The errors avmech raises for bad input: each names the problem and the fix."""


class InputError(ValueError):
    """A sample, file, configuration or argument that avmech cannot use as given."""


class ModelError(ValueError):
    """A model name, checkpoint or setting that avmech cannot load or trace."""
