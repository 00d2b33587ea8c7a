"""Typed errors (``replica.errors``): stable codes, messages, retryable, summaries."""

from __future__ import annotations

import dataclasses

import pytest

from replica import errors
from replica.errors import (
    DataDirError,
    DeltaRejected,
    ErrorInfo,
    ReplicaError,
    ReplicaIdMismatch,
    ReplicaLocked,
    StorageError,
)

CLASSES: list[tuple[type[ReplicaError], str, bool]] = [
    (ReplicaError, "replica_error", False),
    (ReplicaLocked, "replica_locked", True),
    (ReplicaIdMismatch, "replica_id_mismatch", False),
    (DataDirError, "data_dir_error", False),
    (StorageError, "storage_error", True),
]


@pytest.mark.parametrize(("cls", "code", "retryable"), CLASSES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_error_has_its_code_message_and_retryable(cls: type[ReplicaError], code: str, retryable: bool) -> None:
    error = cls("the disk is full; free some space")
    assert error.code == code
    assert error.retryable is retryable
    assert error.message == "the disk is full; free some space"
    assert str(error) == f"[{code}] the disk is full; free some space"
    assert error.info() == ErrorInfo(code, "the disk is full; free some space", retryable)
    assert isinstance(error, ReplicaError) and isinstance(error, Exception)


def test_code_and_retryable_can_be_given_per_error_without_changing_the_class() -> None:
    error = ReplicaError("a relay answered", code="unexpected_role", retryable=True)
    assert (error.code, error.retryable) == ("unexpected_role", True)
    assert str(error) == "[unexpected_role] a relay answered"
    assert error.info() == ErrorInfo("unexpected_role", "a relay answered", True)
    assert (ReplicaError.code, ReplicaError.retryable) == ("replica_error", False)
    not_retryable = StorageError("read-only", retryable=False)
    assert not not_retryable.retryable and StorageError("again").retryable


def test_misuse_errors_derive_from_the_matching_builtin() -> None:
    assert issubclass(ReplicaIdMismatch, ValueError)
    with pytest.raises(ValueError, match="replica_id_mismatch"):
        raise ReplicaIdMismatch("belongs to dev-b")
    # failures outside the caller's control are not builtins' subclasses
    for cls in (ReplicaLocked, DataDirError, StorageError, DeltaRejected):
        assert not issubclass(cls, ValueError | KeyError | TypeError), cls


def test_error_info_is_immutable() -> None:
    info = StorageError("full").info()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.retryable = False  # type: ignore[misc]


# -- DeltaRejected -----------------------------------------------------------

REASONS = [
    errors.REJECT_GAP,
    errors.REJECT_CHECKSUM,
    errors.REJECT_TOO_LARGE,
    errors.REJECT_MALFORMED,
    errors.REJECT_CLASH,
    errors.REJECT_INVALID,
]


def test_the_reject_reasons_are_stable() -> None:
    assert REASONS == [
        "delta_gap",
        "delta_checksum",
        "delta_too_large",
        "delta_malformed",
        "replica_id_clash",
        "delta_invalid",
    ]


@pytest.mark.parametrize("reason", REASONS)
def test_a_rejected_delta_is_named_and_coded_by_its_reason(reason: str) -> None:
    error = DeltaRejected(reason, "bad bytes", document="c7/h", origin="dev-a", seq=7)
    assert error.code == reason and error.reason == reason
    assert (error.document, error.origin, error.seq) == ("c7/h", "dev-a", 7)
    assert error.message == "delta dev-a#7 of document 'c7/h' refused: bad bytes"
    assert str(error) == f"[{reason}] delta dev-a#7 of document 'c7/h' refused: bad bytes"
    assert error.info() == ErrorInfo(reason, error.message, reason == errors.REJECT_GAP)
    assert DeltaRejected.code == "delta_rejected"


def test_only_a_gap_can_be_retried() -> None:
    assert {errors.REJECT_GAP} == errors.RETRYABLE_REJECTS
    assert DeltaRejected(errors.REJECT_GAP, "gap", document="d", origin="o", seq=3).retryable
    for reason in REASONS[1:]:
        assert not DeltaRejected(reason, "no", document="d", origin="o", seq=3).retryable, reason
