"""One error root for everything plaster refuses or fails at.

Every message names what to fix (a config key, a command, a file). Errors must stay
picklable with a single message argument, because they cross Ray process boundaries.
Messages are masked when the error is made (secrets.mask), since they quote URIs and
MLflow's own messages: whatever prints, records or pickles one never carries a password.
"""

from orchestrator.secrets import mask


class PlasterError(Exception):
    """Root of plaster's errors; the CLI prints the message and exits non-zero."""

    exit_code = 1

    def __init__(self, *args):
        # Unpickling calls this again with the masked args: masking is idempotent.
        super().__init__(*(mask(a) if isinstance(a, str) else a for a in args))


class ConfigError(PlasterError):
    """A pipeline.yaml or pipeline folder is invalid."""


class DataError(PlasterError):
    """The data source cannot be read at all (bad shards are quarantined instead)."""


class TrainingError(PlasterError):
    """Ray Train failed to produce a checkpoint."""


class ExportError(PlasterError):
    """The trained model could not be exported to a valid ONNX file."""


class EngineBuildError(PlasterError):
    """An engine could not be built from a precision variant."""


class GateError(PlasterError):
    """The gate could not be evaluated (not the same as a failing gate)."""


class RegistryError(PlasterError):
    """MLflow refused an operation or a registered version failed its load test."""


class StorageError(PlasterError):
    """PLASTER_HOME or storage.uri cannot be written."""


class CycleLockedError(PlasterError):
    """Another cycle of the same pipeline holds the lock."""

    exit_code = 3


class ResumeError(PlasterError):
    """`--resume` found nothing to resume or a record that cannot be continued."""


class CandidateRejected(PlasterError):
    """A stage found the candidate unfit (e.g. ONNX parity out of tolerance).

    Not a failure of plaster: the cycle ends with decision REJECTED and this reason.
    """


class ChampionMoved(PlasterError):
    """The champion alias moved after validation: the cycle judges the candidate again."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT asked the cycle to stop: the stage in flight stops at its next safe
    point and the cycle is recorded `interrupted` (resumable with `plaster run --resume`).

    A BaseException, like KeyboardInterrupt, and outside the PlasterError root on purpose:
    stage code that catches `Exception` to report a failure must let a stop request through.
    """
