"""Exceptions that carry a one-line message meant for the user (the CLI prints them as is)."""


class HyperEditError(Exception):
    """Base class: a problem the user can fix (bad input, wrong model, missing file)."""


class InputError(HyperEditError):
    """A malformed input record: names the file, the record index and the field."""

    def __init__(self, source: str, record: int | None, field: str | None, problem: str):
        self.source, self.record, self.field, self.problem = source, record, field, problem
        where = source
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class ModelLoadError(HyperEditError):
    """The requested model cannot be loaded (unknown name, missing path, unsupported type)."""


class DeltaMismatchError(HyperEditError):
    """An EditDelta does not fit the model it is being applied to."""


class OptionError(HyperEditError, ValueError):
    """An option value that does not fit the model (e.g. a layer out of range); also a ValueError."""


class NonFiniteDeltaError(HyperEditError):
    """An edit whose shifts hold inf or NaN: never saved, applied or recorded."""
