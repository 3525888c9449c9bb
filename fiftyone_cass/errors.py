"""Exceptions raised by fiftyone_cass. All input problems are ``ValueError`` subclasses."""


class CassError(Exception):
    """Base class of fiftyone_cass errors."""


class InvalidInputError(CassError, ValueError):
    """Bad user input (vocabulary, options, image)."""


class ImageLoadError(InvalidInputError):
    """An image could not be read or decoded; the message names the item."""


class WeightsUnavailableError(CassError, RuntimeError):
    """Model weights could not be found or downloaded; the message says how to provide them."""


class CheckpointError(InvalidInputError):
    """A local checkpoint file that cannot be used (not a state dict, pickled objects, other model);
    the message names the file and what was expected."""


class RunAbortedError(CassError, RuntimeError):
    """A labelling run stopped because what it writes to vanished under it (its dataset deleted,
    its mask folder removed); the message says what happened, what was cleaned up and what to do."""
