"""The library's own error types.

Every error a user can cause with a file, an option or a checkpoint is one of these;
the command line turns them into a one-line message and exit code 2.
"""


class ForwardForwardError(Exception):
    """Base class of every error this library raises on purpose."""


class DataError(ForwardForwardError):
    """A data file is missing, malformed, or fails its checksum."""


class ConfigError(ForwardForwardError, ValueError):
    """An option or configuration value is impossible."""


class CheckpointError(ForwardForwardError):
    """A checkpoint is missing, truncated, of an unknown format, or does not fit the model."""


class TrainingError(ForwardForwardError):
    """Training diverged: a loss or goodness became non-finite."""


class DistributedError(ForwardForwardError):
    """Another rank failed, was killed, or did not answer within the distributed timeout."""
