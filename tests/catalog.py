"""The full catalog of schema ``tenancy``, to compare two installs object by object.

One row per object: schema, relations (tables, views, sequences, indexes: owner,
ACL, RLS flags, comment, view definition), columns (position among live
columns, type, NOT NULL, identity, collation, default, ACL, comment),
constraints, indexes, sequences, functions (the full definition with body,
arguments, result, flags, proconfig, owner, ACL, comment), triggers, policies,
types, rules and default privileges. Keys are names, never oids, so two
databases compare.
"""

from __future__ import annotations

import hashlib

import psycopg

CATALOG = """
SELECT 'schema', n.nspname, jsonb_build_array(pg_get_userbyid(n.nspowner), (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(n.nspacl) AS x)::text,
       obj_description(n.oid, 'pg_namespace'))::text
  FROM pg_namespace AS n WHERE n.nspname = 'tenancy'
UNION ALL
SELECT 'relation', c.relname, jsonb_build_array(c.relkind, pg_get_userbyid(c.relowner), (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(c.relacl) AS x)::text,
       c.relrowsecurity, c.relforcerowsecurity, c.relpersistence, c.reloptions::text,
       obj_description(c.oid, 'pg_class'),
       CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END)::text
  FROM pg_class AS c WHERE c.relnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'column', c.relname || '.' || a.attname,
       jsonb_build_array(row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
       format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
       (SELECT co.collname FROM pg_collation co WHERE co.oid = a.attcollation AND a.attcollation <> 100),
       pg_get_expr(d.adbin, d.adrelid), (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) AS x)::text, col_description(c.oid, a.attnum))::text
  FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'tenancy'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.relname || '.' || k.conname,
       jsonb_build_array(k.contype, pg_get_constraintdef(k.oid), k.condeferrable, k.convalidated,
       obj_description(k.oid, 'pg_constraint'))::text
  FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid
 WHERE c.relnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'index', i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'sequence', s.seqrelid::regclass::text,
       jsonb_build_array(format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
       s.seqmin, s.seqcache, s.seqcycle,
       (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid FROM pg_depend AS d
         WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')))::text
  FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
 WHERE c.relnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       jsonb_build_array(pg_get_functiondef(p.oid), p.prokind, pg_get_userbyid(p.proowner),
       (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) AS x)::text, p.proconfig::text, p.prosecdef, p.provolatile, p.proparallel, p.proisstrict,
       p.proleakproof, p.procost, p.prorows, pg_get_function_arguments(p.oid),
       pg_get_function_result(p.oid), obj_description(p.oid, 'pg_proc'))::text
  FROM pg_proc AS p WHERE p.pronamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname,
       jsonb_build_array(pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger'))::text
  FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'tenancy'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'policy', c.relname || '.' || p.polname,
       jsonb_build_array(p.polcmd, p.polpermissive, p.polroles::regrole[]::text,
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))::text
  FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid
 WHERE c.relnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'type', t.typname, jsonb_build_array(t.typtype, pg_get_userbyid(t.typowner), (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(t.typacl) AS x)::text,
       obj_description(t.oid, 'pg_type'))::text
  FROM pg_type AS t WHERE t.typnamespace = 'tenancy'::regnamespace
UNION ALL
SELECT 'rule', c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)
  FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
 WHERE c.relnamespace = 'tenancy'::regnamespace AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'default_acl', d.defaclobjtype::text, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(d.defaclacl) AS x)::text
  FROM pg_default_acl AS d WHERE d.defaclnamespace = 'tenancy'::regnamespace
ORDER BY 1, 2, 3
"""


def catalog(dsn: str) -> dict[tuple[str, str], str]:
    """``{(kind, name): description}`` of every object of schema ``tenancy``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(CATALOG).fetchall()
        # The migrator role's name is derived from the database's name.
        has_migrator = conn.execute(
            "SELECT pg_catalog.to_regclass('tenancy.confinement') IS NOT NULL"
        ).fetchone()
        migrator = (
            conn.execute("SELECT migrator_role FROM tenancy.confinement").fetchone()
            if has_migrator and has_migrator[0]
            else None
        )
    name = None if migrator is None else str(migrator[0])
    if name is None:
        return {(row[0], row[1]): row[2] for row in rows}
    # So are the tenants' group role's and owner roles' names (through it).
    digest = hashlib.md5(name.encode()).hexdigest()[:12]
    group, owner = f"pgtenancy_tenants_{digest}", f"pgtenancy_owner_{digest}_"

    def normal(text: str) -> str:
        return (
            text.replace(name, "<migrator>").replace(group, "<tenants>").replace(owner, "<owner>_")
        )

    return {(row[0], row[1]): normal(row[2]) for row in rows}


def differences(got: dict[tuple[str, str], str], want: dict[tuple[str, str], str]) -> list[str]:
    """Readable differences between two catalogs (empty when equal)."""
    lines = []
    for key in sorted(set(got) | set(want)):
        if key not in want:
            lines.append(f"extra {key[0]} {key[1]}: {got[key]}")
        elif key not in got:
            lines.append(f"missing {key[0]} {key[1]}: {want[key]}")
        elif got[key] != want[key]:
            lines.append(f"changed {key[0]} {key[1]}:\n  got:  {got[key]}\n  want: {want[key]}")
    return lines
