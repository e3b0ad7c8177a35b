"""Parsing pg_restore's table of contents (``pg_restore -l``) and picking the entries a table needs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ..manifest import ContentSummary

# Entry types ("descriptions") that contain a space; the rest are one word. Longest first.
_MULTIWORD = sorted(
    [
        "TABLE DATA",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "DEFAULT ACL",
        "FOREIGN TABLE",
        "FOREIGN DATA WRAPPER",
        "FOREIGN SERVER",
        "USER MAPPING",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "EVENT TRIGGER",
        "ACCESS METHOD",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "ROW SECURITY",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "INDEX ATTACH",
        "LARGE OBJECT",
        "SHELL TYPE",
        "PROCEDURAL LANGUAGE",
        "DATABASE PROPERTIES",
        "TABLE ATTACH",
        "SECURITY LABEL",
        "BLOB METADATA",
        "BLOB COMMENTS",
        "LARGE OBJECTS",
        "SUBSCRIPTION TABLE",
    ],
    key=len,
    reverse=True,
)
_LINE = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")


@attrs.frozen(kw_only=True)
class TocEntry:
    """One entry of an archive's table of contents, as ``pg_restore -l`` lists it."""

    dump_id: int
    type: str
    schema: str | None
    name: str
    owner: str
    line: str = attrs.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dump_id": self.dump_id,
            "type": self.type,
            "schema": self.schema,
            "name": self.name,
            "owner": self.owner,
        }


def parse_toc(text: str) -> list[TocEntry]:
    """Entries of a ``pg_restore -l`` listing (comment lines skipped)."""
    out = []
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        rest = m.group(4)
        desc = next((d for d in _MULTIWORD if rest.startswith(d + " ")), rest.split(" ", 1)[0])
        rest = rest[len(desc) + 1 :]
        schema, _, rest = rest.partition(" ")
        name, _, owner = rest.rpartition(" ")
        out.append(
            TocEntry(
                dump_id=int(m.group(1)),
                type=desc,
                schema=None if schema == "-" else schema,
                name=name,
                owner=owner,
                line=raw,
            )
        )
    return out


def summarize(entries: Sequence[TocEntry]) -> ContentSummary:
    by_type = Counter(e.type for e in entries)
    schemas = {e.schema for e in entries if e.schema} | {e.name for e in entries if e.type == "SCHEMA"}
    return ContentSummary(
        schemas=len(schemas),
        tables=by_type.get("TABLE", 0),
        objects=len(entries),
        by_type=dict(sorted(by_type.items())),
    )


def list_file_text(entries: Iterable[TocEntry]) -> str:
    """The text of a ``pg_restore -L`` list holding exactly ``entries`` (give them in archive order)."""
    return "".join(e.line + "\n" for e in entries)


def _ident_forms(name: str) -> list[str]:
    quoted = '"' + name.replace('"', '""') + '"'
    return [re.escape(quoted)] + ([re.escape(name)] if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else [])


def qualified_pattern(schema: str, table: str) -> str:
    """A regex for ``schema.table`` as pg_dump prints it (quoted or not)."""
    return f"(?:{'|'.join(_ident_forms(schema))})\\.(?:{'|'.join(_ident_forms(table))})"


def split_sql_blocks(sql: str) -> dict[tuple[str, str, str], str]:
    """Map (type, schema, name) to the SQL of each entry in pg_restore's SQL output."""
    out: dict[tuple[str, str, str], str] = {}
    header = re.compile(r"^-- (?:Data for )?Name: (.*?); Type: (.*?); Schema: (.*?); Owner: .*$", re.M)
    matches = list(header.finditer(sql))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(sql)
        out[(m.group(2), m.group(3), m.group(1))] = sql[m.end() : end]
    return out


_TABLE_SCOPED = ("CONSTRAINT", "FK CONSTRAINT", "DEFAULT", "TRIGGER", "POLICY", "ROW SECURITY", "TABLE ATTACH")
_DECORATIONS = ("COMMENT", "ACL", "SECURITY LABEL")


def _forms(name: str) -> set[str]:
    """A name as pg_dump may print it inside a tag: bare, or double-quoted."""
    return {name, '"' + name.replace('"', '""') + '"'}


def table_entries(
    entries: Sequence[TocEntry],
    schema: str,
    table: str,
    *,
    definition_sql: dict[tuple[str, str, str], str],
    data: bool = True,
    definition: bool = True,
    foreign_keys: bool = True,
    extras: bool = True,
) -> list[TocEntry]:
    """Entries that recreate one table: definition, data, and (with ``extras``) what hangs off it.

    ``definition_sql`` is the SQL of candidate INDEX and SEQUENCE entries (to find those that belong to the
    table, which the listing alone does not say).
    """
    qualified = re.compile(qualified_pattern(schema, table))
    on_table = re.compile(rf"\bON\s+(?:ONLY\s+)?{qualified.pattern}[\s(]")
    owned_seqs: set[str] = set()
    for (typ, sch, name), sql in definition_sql.items():
        if sch != schema:
            continue
        if typ == "SEQUENCE OWNED BY" and re.search(rf"OWNED BY {qualified.pattern}\.", sql):
            owned_seqs.add(name)
        if typ == "SEQUENCE" and re.search(rf"ALTER TABLE (?:ONLY )?{qualified.pattern}\s", sql):
            owned_seqs.add(name)  # an identity column's sequence

    def structural(e: TocEntry) -> bool:
        if e.type == "TABLE DATA":
            return data and e.name == table
        if not definition:
            return False
        if e.type == "TABLE":
            return e.name == table
        if not extras:
            return False
        if e.type == "INDEX":
            return bool(on_table.search(definition_sql.get(("INDEX", schema, e.name), "")))
        if e.type in ("SEQUENCE", "SEQUENCE OWNED BY"):
            return e.name in owned_seqs
        if e.type == "SEQUENCE SET":
            return data and e.name in owned_seqs
        if e.type == "FK CONSTRAINT":
            return foreign_keys and e.name.startswith(table + " ")
        if e.type in _TABLE_SCOPED:
            return e.name == table or e.name.startswith(table + " ")
        return False

    picked = [e for e in entries if e.schema == schema and structural(e)]
    if not (definition and extras):
        return picked
    table_forms = _forms(table)
    object_forms = set().union(*(_forms(e.name) for e in picked if e.type in ("INDEX", "SEQUENCE")))

    def decorates(tag: str) -> bool:
        kind, _, rest = tag.partition(" ")
        if kind in ("TABLE", "VIEW"):
            return rest in table_forms
        if kind == "COLUMN":
            return any(rest.startswith(f + ".") for f in table_forms)
        if kind in ("INDEX", "SEQUENCE"):
            return rest in object_forms
        return " ON " in rest and rest.rsplit(" ON ", 1)[1] in table_forms  # constraints, triggers, policies

    wanted = {id(e) for e in picked} | {
        id(e) for e in entries if e.schema == schema and e.type in _DECORATIONS and decorates(e.name)
    }
    return [e for e in entries if id(e) in wanted]


def belongs_to(entry: TocEntry, tables: Sequence[str]) -> bool:
    """Whether a table-level entry concerns one of ``tables`` (TABLE, TABLE DATA and entries named after it)."""
    return any(entry.name == t or entry.name.startswith(t + " ") for t in tables)


def schema_entries(
    toc: Sequence[TocEntry], schemas: Iterable[str], tables: Sequence[str] = (), *, present: Iterable[str] = ()
) -> list[TocEntry]:
    """Every entry of ``schemas`` (restricted to ``tables`` when given), plus the schemas themselves unless the
    target already has them (``present``): pg_restore -n alone would not create them.

    Raises `KeyError` naming the schemas (sorted, comma-separated) that ``toc`` does not have."""
    wanted, have = set(schemas), set(present)
    missing = wanted - {e.schema for e in toc if e.schema} - {e.name for e in toc if e.type == "SCHEMA"}
    if missing:
        raise KeyError(", ".join(sorted(missing)))
    out = []
    for e in toc:
        if e.type == "SCHEMA" or (e.schema is None and e.name.startswith("SCHEMA ")):
            name = e.name.removeprefix("SCHEMA ") if e.type != "SCHEMA" else e.name
            if name in wanted and name not in have:
                out.append(e)
        elif e.schema in wanted and (not tables or belongs_to(e, tables)):
            out.append(e)
    return out
