"""One family of user-facing errors.

Every error a user can cause (bad path, bad data, bad config, corrupt file, ...) is an
``EdgeZooError``: a ``ValueError`` whose message names the problem *and* the fix. The CLI
prints these without a stack trace; anything else is a bug and keeps its trace.
"""


class EdgeZooError(ValueError):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(EdgeZooError):
    """Unknown family/size, inconsistent architecture, or a config that does not match."""


class DataError(EdgeZooError):
    """Missing, empty or malformed training / evaluation data."""


class CheckpointError(EdgeZooError):
    """A checkpoint or model dir that is missing, truncated or corrupt."""


class ResourceError(EdgeZooError):
    """Not enough disk or device memory for what was asked."""


class ExportError(EdgeZooError):
    """An ONNX export that failed or did not validate."""


class InputError(EdgeZooError):
    """A request the model cannot serve: empty prompt, prompt longer than the context, ..."""
