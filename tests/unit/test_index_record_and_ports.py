"""The manifest's record of invalid indexes (read from old manifests too), and the port choices of drill sandboxes."""

from __future__ import annotations

import json
import socket

import attrs
import pytest
from test_manifest import make

from pgrecovery import BackupManifest, ClusterError, ConfigurationError, ManifestError
from pgrecovery.cluster import describe_ports, free_port, parse_ports, port_choice


def test_invalid_indexes_round_trip() -> None:
    m = attrs.evolve(make(), invalid_indexes={"shop": ["public.orders_note_idx", '"Odd"."Name"']})
    assert m.invalid_indexes == {"shop": ("public.orders_note_idx", '"Odd"."Name"')}
    data = json.loads(m.to_json())
    assert data["invalid_indexes"] == {"shop": ["public.orders_note_idx", '"Odd"."Name"']}
    assert BackupManifest.from_json(m.to_json()) == m


def test_manifest_without_the_record_still_loads() -> None:
    data = json.loads(make().to_json())
    del data["invalid_indexes"]
    del data["manifest_sha256"]  # as written before manifests carried their own digest, too
    assert BackupManifest.from_json(json.dumps(data)).invalid_indexes is None


@pytest.mark.parametrize("value", [["public.i"], {"shop": "public.i"}, "shop"])
def test_malformed_record_is_refused(value: object) -> None:
    data = make().to_dict()
    data["invalid_indexes"] = value
    with pytest.raises(ManifestError, match="invalid_indexes must map database names to lists of index names"):
        BackupManifest.from_dict(data)


def test_port_choices() -> None:
    assert parse_ports("5432") == range(5432, 5433)
    assert parse_ports(" 55000-55099 ") == range(55000, 55100)
    assert port_choice(5432) == (5432,)
    assert port_choice(None) is None
    assert describe_ports(range(55000, 55100)) == "55000-55099"
    assert describe_ports([5432]) == "5432"
    assert describe_ports([1, 3, 5, 7, 9, 11, 13]) == "1, 3, 5, 7, 9 and 2 more"
    for text, says in (
        ("", "'' is not a port or a port range"),
        ("55000:55100", "'55000:55100' is not a port or a port range: use PORT or LOW-HIGH"),
        ("9-1", "port range '9-1' ends before it starts"),
        ("65535-65536", "65536 is not a TCP port"),
    ):
        with pytest.raises(ConfigurationError, match=says):
            parse_ports(text)
    with pytest.raises(ConfigurationError, match="the port range is empty"):
        port_choice(range(10, 10))
    with pytest.raises(ConfigurationError, match="True is not a TCP port"):
        port_choice([True])


def test_free_port_takes_the_first_free_one_of_a_range() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with socket.socket() as probe:  # a port free a moment ago (not taken + 1: other tests' servers use ports)
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        assert free_port([taken, free]) == free
        with pytest.raises(ClusterError) as err:
            free_port([taken])
        assert str(err.value) == (
            f"no free port for a PostgreSQL server in {taken} (it is in use): give more ports or free one"
        )
