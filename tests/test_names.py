from __future__ import annotations

import pytest

from replica.names import check_document_name, check_replica_id, new_replica_id


@pytest.mark.parametrize("name", ["a", "campaign-7/households", "x/y/z", "a.b_c-d", "A9", "_x"])
def test_good_document_names(name: str) -> None:
    assert check_document_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "/a", "a/", "a//b", "../x", "a/./b", "a b", "é", "a\x00", "-a", ".hidden", "x" * 256, 7, None]
)
def test_bad_document_names_name_the_rule(name: object) -> None:
    with pytest.raises(ValueError, match="segments"):
        check_document_name(name)


@pytest.mark.parametrize("rid", ["dev-a", "r123", "A.b_c", "x" * 64])
def test_good_replica_ids(rid: str) -> None:
    assert check_replica_id(rid) == rid


@pytest.mark.parametrize("rid", ["", "-a", "a/b", "a b", "x" * 65, 3])
def test_bad_replica_ids(rid: object) -> None:
    with pytest.raises(ValueError, match="replica id"):
        check_replica_id(rid)


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {new_replica_id() for _ in range(100)}
    assert len(ids) == 100
    for rid in ids:
        check_replica_id(rid)
