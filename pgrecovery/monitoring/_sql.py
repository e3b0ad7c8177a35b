"""The SQL of ``pgrecovery_check()``: the checks of `pgrecovery.monitoring.check`, in PL/pgSQL, for monitoring
from inside a database. Built by `check_function_sql`; see docs/monitoring.md."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from ..errors import ConfigurationError
from .thresholds import AgeLimit, Thresholds

CHECK_FUNCTION: Final = "pgrecovery_check"
DEFAULT_STATUS_TABLE: Final = "pgrecovery_backup_status"
_PART: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _table_name(_instance: object, _attr: object, value: str) -> None:
    """Validate a status table's name (an attrs validator, also called directly)."""
    parts = value.split(".")
    if len(parts) > 2 or not all(_PART.fullmatch(p) for p in parts):
        raise ConfigurationError(
            f"status table name {value!r} is not valid: use lowercase letters, digits and _ (starting with a letter "
            "or _), at most 63 characters, optionally schema-qualified (schema.table)"
        )


def _interval(value: timedelta | None) -> str:
    return "NULL" if value is None else f"interval '{int(value.total_seconds())} seconds'"


def _int(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))


_FUNCTION_BODY: Final = """
CREATE OR REPLACE FUNCTION {function}(
    logical_warning interval DEFAULT {logical_warning},
    logical_critical interval DEFAULT {logical_critical},
    base_warning interval DEFAULT {base_warning},
    base_critical interval DEFAULT {base_critical},
    check_wal boolean DEFAULT {check_wal},
    wal_lag_warning interval DEFAULT {wal_lag_warning},
    wal_lag_critical interval DEFAULT {wal_lag_critical},
    ready_warning integer DEFAULT {ready_warning},
    ready_critical integer DEFAULT {ready_critical},
    failing_critical interval DEFAULT {failing_critical}
) RETURNS TABLE ("check" text, state text, detail text)
LANGUAGE plpgsql
{search_path}AS $pgrecovery$
#variable_conflict use_column
DECLARE
    k text;
    warn interval;
    crit interval;
    last_ok timestamptz;
    elapsed interval;
    r record;
    a record;
    n_ready bigint;
    oldest timestamptz;
    lag interval;
    since timestamptz;
    failed text[] := '{{}}';
    verify_failed boolean := false;
    n_kinds integer := 0;
BEGIN
    FOREACH k IN ARRAY ARRAY['logical', 'base'] LOOP
        IF k = 'logical' THEN warn := logical_warning; crit := logical_critical;
        ELSE warn := base_warning; crit := base_critical; END IF;
        CONTINUE WHEN warn IS NULL AND crit IS NULL;
        SELECT max(t.created_at) INTO last_ok FROM {table} t WHERE t.type = k AND t.status = 'success';
        "check" := k || '-backup';
        IF last_ok IS NULL THEN
            state := CASE WHEN crit IS NOT NULL THEN 'CRITICAL' ELSE 'WARNING' END;
            detail := format('no successful %s backup recorded in %s', k, {table_name});
        ELSE
            elapsed := greatest(now() - last_ok, interval '0');
            state := CASE WHEN crit IS NOT NULL AND elapsed >= crit THEN 'CRITICAL'
                          WHEN warn IS NOT NULL AND elapsed >= warn THEN 'WARNING' ELSE 'OK' END;
            detail := format('newest successful %s backup recorded %s ago (warning after %s, critical after %s)',
                             k, date_trunc('second', justify_hours(elapsed)),
                             coalesce(justify_hours(warn)::text, 'off'), coalesce(justify_hours(crit)::text, 'off'));
        END IF;
        RETURN NEXT;
    END LOOP;

    FOR r IN SELECT DISTINCT ON (t.type) t.type, t.status, t.created_at, t.error_text
             FROM {table} t ORDER BY t.type, t.created_at DESC, t.id DESC LOOP
        n_kinds := n_kinds + 1;
        IF r.status = 'failure' THEN
            failed := failed || format('%s failed at %s%s', r.type, date_trunc('second', r.created_at),
                                       coalesce(': ' || split_part(r.error_text, E'\\n', 1), ''));
            verify_failed := verify_failed OR r.type = 'verify';
        END IF;
    END LOOP;
    "check" := 'last-run';
    IF cardinality(failed) = 0 THEN
        state := 'OK';
        detail := CASE WHEN n_kinds = 0 THEN format('no run recorded yet in %s', {table_name})
                       ELSE 'the latest run of each kind succeeded' END;
    ELSE
        state := CASE WHEN verify_failed THEN 'CRITICAL' ELSE 'WARNING' END;
        detail := array_to_string(failed, '; ');
    END IF;
    RETURN NEXT;

    IF NOT check_wal THEN RETURN; END IF;
    IF NOT (current_setting('archive_mode') = 'always'
            OR (current_setting('archive_mode') = 'on' AND NOT pg_is_in_recovery())) THEN
        "check" := 'wal-archiving';
        IF pg_is_in_recovery() AND current_setting('archive_mode') = 'on' THEN
            state := 'OK'; detail := 'standby: the primary archives WAL';
        ELSE
            state := 'CRITICAL';
            detail := format('archive_mode is %s on the server: no WAL is archived', current_setting('archive_mode'));
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT * INTO a FROM pg_stat_archiver;
    BEGIN
        SELECT count(*), min(s.modification) INTO n_ready, oldest
        FROM pg_ls_archive_statusdir() s WHERE s.name LIKE '%.ready';
    EXCEPTION WHEN insufficient_privilege OR undefined_function THEN
        n_ready := NULL; oldest := NULL;
    END;

    "check" := 'wal-lag';
    IF n_ready IS NOT NULL THEN
        lag := CASE WHEN n_ready = 0 OR oldest IS NULL THEN interval '0'
                    ELSE greatest(now() - oldest, interval '0') END;
        detail := CASE WHEN n_ready = 0 THEN 'nothing waiting to be archived'
                       ELSE format('%s segment(s) waiting, the oldest for %s',
                                   n_ready, date_trunc('second', justify_hours(lag))) END;
    ELSIF a.last_archived_time IS NOT NULL THEN
        lag := greatest(now() - a.last_archived_time, interval '0');
        detail := format('last segment archived %s ago (archive_status unreadable: grant pg_monitor)',
                         date_trunc('second', justify_hours(lag)));
    ELSE
        lag := NULL;
        detail := 'nothing archived yet (archive_status unreadable: grant pg_monitor)';
    END IF;
    state := CASE WHEN lag IS NULL THEN 'UNKNOWN'
                  WHEN wal_lag_critical IS NOT NULL AND lag >= wal_lag_critical THEN 'CRITICAL'
                  WHEN wal_lag_warning IS NOT NULL AND lag >= wal_lag_warning THEN 'WARNING' ELSE 'OK' END;
    RETURN NEXT;

    "check" := 'wal-ready';
    IF n_ready IS NULL THEN
        state := 'UNKNOWN'; detail := 'cannot count .ready files: grant pg_monitor to this role';
    ELSE
        state := CASE WHEN ready_critical IS NOT NULL AND n_ready >= ready_critical THEN 'CRITICAL'
                      WHEN ready_warning IS NOT NULL AND n_ready >= ready_warning THEN 'WARNING' ELSE 'OK' END;
        detail := format('%s segment(s) waiting to be archived (warning at %s, critical at %s)',
                         n_ready, coalesce(ready_warning::text, 'off'), coalesce(ready_critical::text, 'off'));
    END IF;
    RETURN NEXT;

    "check" := 'wal-failures';
    IF a.last_failed_time IS NOT NULL AND (a.last_archived_time IS NULL OR a.last_failed_time > a.last_archived_time)
    THEN
        since := coalesce(oldest, a.last_archived_time);
        state := CASE WHEN failing_critical IS NULL THEN 'WARNING'
                      WHEN since IS NULL OR now() - since >= failing_critical THEN 'CRITICAL' ELSE 'WARNING' END;
        detail := format('archive_command is failing: %s failed attempt(s), the latest on %s at %s; see the server log',
                         a.failed_count, a.last_failed_wal, date_trunc('second', a.last_failed_time));
    ELSE
        state := 'OK';
        detail := format('%s failed attempt(s) in total; the latest attempt succeeded', a.failed_count);
    END IF;
    RETURN NEXT;
END
$pgrecovery$;
"""


def function_sql(schema: str | None, table: str, thresholds: Thresholds | None) -> str:
    from psycopg import sql

    th = thresholds or Thresholds()
    parts = (schema, table) if schema else (table,)
    function = sql.Identifier(*parts[:-1], CHECK_FUNCTION).as_string(None)
    logical = th.backups.get("logical", AgeLimit())
    base = th.backups.get("base", AgeLimit())
    return _FUNCTION_BODY.format(
        function=function,
        table=sql.Identifier(*parts).as_string(None),
        table_name=sql.Literal(".".join(parts)).as_string(None),
        search_path="SET search_path = pg_catalog, pg_temp\n" if schema else "",
        logical_warning=_interval(logical.warning),
        logical_critical=_interval(logical.critical),
        base_warning=_interval(base.warning),
        base_critical=_interval(base.critical),
        check_wal="true" if th.wal else "false",
        wal_lag_warning=_interval(th.wal_lag.warning),
        wal_lag_critical=_interval(th.wal_lag.critical),
        ready_warning=_int(th.ready.warning),
        ready_critical=_int(th.ready.critical),
        failing_critical=_interval(th.failing_critical),
    ).lstrip()


def check_function_sql(table: str = DEFAULT_STATUS_TABLE, thresholds: Thresholds | None = None) -> str:
    """SQL creating ``pgrecovery_check(...)`` (in ``table``'s schema) that checks from inside the database.

    It returns rows ``("check", state, detail)`` from the status table (backup ages by recorded successes, the
    latest run of each kind) and this server's archiver (``pg_stat_archiver``, ``.ready`` files). Its parameters
    default to ``thresholds``; pass others by name: ``select * from pgrecovery_check(logical_critical => '2 days')``.
    A schema-qualified ``table`` gives a function with a fixed search_path; an unqualified one resolves through
    the caller's search_path (`StatusTable.install_check_function` always qualifies).
    """
    _table_name(None, None, table)
    schema, _, name = table.rpartition(".")
    return function_sql(schema or None, name, thresholds)
