"""Table-level recovery under a new name: the table, restored into a scratch database, renamed there (with its
indexes) and copied into the target with pg_dump | pg_restore, so nothing else in the target is touched."""

from __future__ import annotations

import subprocess

from .. import pgtools
from .._pgdb import connect, server_info
from ._archive import find_pg_restore, run_fed


def rename_table(conninfo: str, schema: str, name: str, new_name: str) -> None:
    """Rename ``schema.name`` to ``new_name`` in the database ``conninfo`` names, and its indexes after it."""
    from psycopg import sql

    with connect(conninfo) as conn:
        indexes = conn.execute(
            "select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid "
            "where x.indrelid = to_regclass(%s)",
            (sql.Identifier(schema, name).as_string(conn),),
        ).fetchall()
        conn.execute(
            sql.SQL("ALTER TABLE {}.{} RENAME TO {}").format(
                sql.Identifier(schema), sql.Identifier(name), sql.Identifier(new_name)
            )
        )
        for (idx,) in indexes:
            renamed = (new_name + idx[len(name) :]) if idx.startswith(name) else f"{new_name}_{idx}"
            conn.execute(
                sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
                    sql.Identifier(schema), sql.Identifier(idx), sql.Identifier(renamed[:63])
                )
            )


def copy_table(source: str, target: str, schema: str, name: str) -> None:
    """Copy one table from the database ``source`` names into ``target``'s (pg_dump piped into pg_restore)."""
    info = server_info(source)
    pg_dump = pgtools.find_tool("pg_dump", min_major=info.major)
    pg_restore = find_pg_restore(info.major)
    src_ci, env = pgtools.split_secret(source)
    dst_ci, dst_env = pgtools.split_secret(target)
    dump = pgtools.pg_dump_command(
        pg_dump, src_ci, fmt="custom", compress=0, tables=[quoted(schema) + "." + quoted(name)]
    )
    with pgtools.Spawned(dump, env=env, stdout=subprocess.PIPE, what="pg_dump (scratch)") as producer:
        assert producer.proc.stdout is not None
        try:
            run_fed(
                pgtools.pg_restore_command(pg_restore, conninfo=dst_ci, no_owner=True),
                producer.proc.stdout,
                env=dst_env,
                what="pg_restore",
                capture=False,
            )
        finally:
            producer.check()


def quoted(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
