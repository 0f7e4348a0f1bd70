import pytest

from iotdps.errors import InvalidRegistrationId
from iotdps.ids import check_registration_id, is_valid_registration_id


@pytest.mark.parametrize("value", ["dev-1", "A.b_c:d-", "x", "a" * 128, "0ne00ABC"])
def test_valid_registration_ids(value: str) -> None:
    assert check_registration_id(value) == value
    assert is_valid_registration_id(value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ("a" * 129, "at most 128"),
        ("dev 1", "only letters"),
        ("dév", "only letters"),
        ("dev.", "must end"),
        ("dev_", "must end"),
        ("dev/1", "only letters"),
    ],
)
def test_invalid_registration_ids(value: str, words: str) -> None:
    assert not is_valid_registration_id(value)
    with pytest.raises(InvalidRegistrationId, match=words):
        check_registration_id(value)
