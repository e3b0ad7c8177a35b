from __future__ import annotations

from pgrecovery.logical._toc import parse_toc, split_sql_blocks, summarize, table_entries

LISTING = """;
; Archive created at 2026-11-25 13:23:58 UTC
;     dbname: postgres
;
; Selected TOC Entries:
;
6; 2615 16385 SCHEMA - s1 postgres
216; 1259 16387 TABLE public orders postgres
3371; 0 0 COMMENT public TABLE orders postgres
3372; 0 0 ACL public TABLE orders postgres
215; 1259 16386 SEQUENCE public orders_id_seq postgres
3373; 0 0 SEQUENCE OWNED BY public orders_id_seq postgres
219; 1259 16409 VIEW public v postgres
218; 1259 16400 TABLE s1 t2 postgres
217; 1259 16399 SEQUENCE s1 t2_id_seq postgres
3207; 2604 16390 DEFAULT public orders id postgres
220; 1255 16401 FUNCTION public f(integer, text) postgres
3362; 2613 16408 BLOB - 16408 postgres
3359; 0 16387 TABLE DATA public orders postgres
3361; 0 16400 TABLE DATA s1 t2 postgres
3374; 0 0 SEQUENCE SET public orders_id_seq postgres
3363; 0 0 BLOBS - BLOBS<SP>
3211; 2606 16395 CONSTRAINT public orders orders_pkey postgres
3209; 1259 16398 INDEX public orders_created_idx postgres
3210; 1259 16399 INDEX public other_idx postgres
3214; 2606 16403 FK CONSTRAINT s1 t2 t2_y_fkey postgres
""".replace("<SP>", " ")  # pg_restore prints an empty owner

SQL = """--
-- Name: orders_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: postgres
--

ALTER SEQUENCE public.orders_id_seq OWNED BY public.orders.id;

--
-- Name: orders_created_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX orders_created_idx ON public.orders USING btree (created);

--
-- Name: other_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX other_idx ON public.orders_archive USING btree (created);
"""


def test_parse_handles_multiword_types_and_missing_owner() -> None:
    entries = parse_toc(LISTING)
    assert len(entries) == 20
    by_id = {e.dump_id: e for e in entries}
    assert (by_id[3373].type, by_id[3373].schema, by_id[3373].name) == ("SEQUENCE OWNED BY", "public", "orders_id_seq")
    assert (by_id[3214].type, by_id[3214].name) == ("FK CONSTRAINT", "t2 t2_y_fkey")
    assert (by_id[3363].type, by_id[3363].schema, by_id[3363].name, by_id[3363].owner) == ("BLOBS", None, "BLOBS", "")
    assert by_id[6].schema is None
    assert by_id[6].name == "s1"
    fn = next(e for e in entries if e.type == "FUNCTION")
    assert fn.name == "f(integer, text)"


def test_summary_counts() -> None:
    s = summarize(parse_toc(LISTING))
    assert (s.schemas, s.tables, s.objects) == (2, 2, 20)
    assert s.by_type["TABLE DATA"] == 2


def test_table_entries_pick_what_belongs_to_the_table() -> None:
    entries = parse_toc(LISTING)
    picked = table_entries(entries, "public", "orders", definition_sql=split_sql_blocks(SQL))
    assert {e.dump_id for e in picked} == {216, 3371, 3372, 215, 3373, 3207, 3359, 3374, 3211, 3209}
    data_only = table_entries(entries, "public", "orders", definition_sql={}, definition=False)
    assert [e.type for e in data_only] == ["TABLE DATA"]
