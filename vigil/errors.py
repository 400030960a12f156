"""Vigil's one exception tree.

Every error Vigil raises on purpose derives from :class:`VigilError`, mixed with the
standard exception it specialises so callers can catch either::

    VigilError
    ├── ConfigError(VigilError, ValueError)        bad setting or CLI argument
    ├── SchemaError(VigilError, ValueError)        an event that fails validation
    │   ├── (carries a machine-readable ``reason`` for the dead-letter topic)
    │   ├── ImageError                             a study's pixels cannot be fetched or read
    │   └── MessageError                           an HL7 v2 or FHIR message the gateway cannot use
    │       └── (FhirError, streams.gateway.fhir_map: adds the FHIRPath at fault)
    ├── StateError(VigilError, ValueError)         a stored patient state cannot be decoded
    ├── StackError(VigilError, RuntimeError)       a local service failed to start or stop
    ├── TopicError(VigilError, RuntimeError)       Kafka topics missing or misconfigured
    ├── RecoveryError(VigilError, RuntimeError)    table recovery gets no changelog records
    ├── InferenceError(VigilError, RuntimeError)   a model request failed
    │   └── CircuitOpenError                       the circuit breaker refuses calls
    └── ModelError(VigilError, RuntimeError)       training, export or artifact problems
        └── FederationError                        a federated round or site failed
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "FederationError",
    "ImageError",
    "InferenceError",
    "MessageError",
    "ModelError",
    "RecoveryError",
    "SchemaError",
    "StackError",
    "StateError",
    "TopicError",
    "VigilError",
]


class VigilError(Exception):
    """Base class of every error Vigil raises deliberately."""


class ConfigError(VigilError, ValueError):
    """A setting or command-line argument is invalid."""


class SchemaError(VigilError, ValueError):
    """An event failed validation.

    Args:
        reason: Short machine-readable reason (for example ``"unknown_code"``); it is the
            ``reason`` field of the dead-letter record and a bounded metric label.
        detail: Human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ImageError(SchemaError):
    """An imaging study's pixels are missing, too large or not a readable image; the
    event goes to dead-letter with ``reason`` ``image_unavailable`` or ``image_unreadable``."""


class MessageError(SchemaError):
    """A hospital-interface message (HL7 v2 over MLLP, FHIR) that ``vigil gateway`` cannot
    use: it is answered with an error (HL7 ``AE``, a FHIR OperationOutcome) and goes to
    dead-letter with ``reason``.

    Args:
        reason: A dead-letter reason (see ``SchemaError``).
        detail: Human-readable explanation, without field values.
        control_id: The HL7 message control id (MSH-10) when it could be read, for the ACK.
    """

    def __init__(self, reason: str, detail: str, *, control_id: str | None = None) -> None:
        super().__init__(reason, detail)
        self.control_id = control_id


class StateError(VigilError, ValueError):
    """A stored patient state (a table value or changelog record) is not a state this
    version can read: bad magic or version, truncated, or inconsistent."""


class StackError(VigilError, RuntimeError):
    """A local service failed to start, become healthy, or stop."""


class TopicError(VigilError, RuntimeError):
    """Kafka topics are missing or misconfigured."""


class RecoveryError(VigilError, RuntimeError):
    """A worker's table recovery stopped receiving its changelog records (the worker
    stops, so that a fresh member takes its partitions)."""


class InferenceError(VigilError, RuntimeError):
    """A model inference request failed."""


class CircuitOpenError(InferenceError):
    """The circuit breaker is open: calls are refused until the cool-down ends."""


class ModelError(VigilError, RuntimeError):
    """Training, export or loading of a model artifact failed."""


class FederationError(ModelError):
    """A federated round failed (too few sites answered, a site or the server is gone)."""
