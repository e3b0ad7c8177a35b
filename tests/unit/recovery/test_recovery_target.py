"""Recovery targets are validated where they are built: an empty one is never "the end of the archive"."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pgrecovery import ConfigurationError, RecoveryTarget


@pytest.mark.parametrize(
    "make",
    [RecoveryTarget.time, RecoveryTarget.xid, RecoveryTarget.name, RecoveryTarget.lsn],
    ids=["time", "xid", "name", "lsn"],
)
@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_an_empty_or_blank_target_is_refused(make: Callable[[str], RecoveryTarget], value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"is empty: .*RecoveryTarget\.latest\(\)"):
        make(value)


@pytest.mark.parametrize("kind", ["time", "xid", "name", "lsn"])
def test_a_target_built_by_hand_needs_its_value(kind: str) -> None:
    with pytest.raises(ConfigurationError, match="is empty"):
        RecoveryTarget(kind=kind, value=" ")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="is empty"):
        RecoveryTarget(kind=kind)  # type: ignore[arg-type]


def test_latest_and_immediate_take_no_value() -> None:
    assert RecoveryTarget.latest().settings() == {"recovery_target_timeline": "latest"}
    assert RecoveryTarget.immediate().settings()["recovery_target"] == "immediate"
    with pytest.raises(ConfigurationError, match="takes no value"):
        RecoveryTarget(kind="latest", value="2026-01-01")
    with pytest.raises(ConfigurationError):
        RecoveryTarget(kind="yesterday")  # type: ignore[arg-type]


def test_values_are_trimmed_but_restore_point_names_kept_as_given() -> None:
    assert RecoveryTarget.xid(" 42 ").value == "42"
    assert RecoveryTarget.lsn(" 0/3000060 ").value == "0/3000060"
    assert RecoveryTarget.time(" 2026-03-15 14:30:00+00 ").value == "2026-03-15T14:30:00+00:00"
    assert RecoveryTarget.name(" before upgrade").value == " before upgrade"
