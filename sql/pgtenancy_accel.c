/*
 * pgtenancy_accel.c — optional C fast path of the per-transaction functions.
 *
 * Entering a tenant (tenancy.enter_tenant) and the policies' tenant test
 * (tenancy.active_tenant_id, once per statement) are PL/pgSQL; their cost is
 * mostly the PL/pgSQL machinery, not the work (one index probe, a few
 * settings). These functions do the same work for the ONE common case — the
 * tenant exists, is active, has no limits and its schema is there — and hand
 * EVERY other case to the PL/pgSQL implementation, kept under another name
 * (tenancy.<name>_plpgsql, made by tenancy.set_accelerator()). So refusals
 * (SQLSTATE, message, DETAIL, HINT) are the PL/pgSQL ones by construction;
 * nothing here raises a tenant error of its own.
 *
 * Installed only by a superuser (C functions), only where the server has
 * this library; everywhere else the PL/pgSQL functions run as they are
 * (sql/011_accelerator.sql). The application role may call these functions
 * with any argument: they return nothing the tenancy.tenant_directory view
 * (granted to it) does not show.
 *
 * Catalog look-ups (schema, table, index, columns) are done on every call
 * through the syscache/relcache, which PostgreSQL invalidates itself: no
 * private cache can go stale when the kit is uninstalled and installed again
 * in the same backend, and each look-up is a hash probe.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgtenancy_enter_tenant);
PG_FUNCTION_INFO_V1(pgtenancy_enter);
PG_FUNCTION_INFO_V1(pgtenancy_enter_known);
PG_FUNCTION_INFO_V1(pgtenancy_enter_token);
PG_FUNCTION_INFO_V1(pgtenancy_active_tenant_id);
PG_FUNCTION_INFO_V1(pgtenancy_verify_entry_token);
PG_FUNCTION_INFO_V1(pgtenancy_enter_tenant_token);
PG_FUNCTION_INFO_V1(pgtenancy_active_tenant_id_strict);
PG_FUNCTION_INFO_V1(pgtenancy_fence_target);

/* Microseconds from the Unix epoch to PostgreSQL's (2000-01-01). */
#define UNIX_OFFSET_US \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC)

/*
 * What has committed by now: the snapshot of the checks that must not trust
 * the snapshot a statement runs under (a REPEATABLE READ or SERIALIZABLE
 * transaction's, a cursor's). A new MVCC snapshot (GetLatestSnapshot), or in
 * parallel mode, which refuses that (a review found every parallel plan of
 * a guarded table failing with XX000 in those levels), SnapshotSelf: not
 * one instant, so a lookup there can miss a row that a concurrent update
 * moved (seen: 202 misses in 80,000 calls under a loop of non-HOT updates),
 * and its callers try it COMMITTED_TRIES times before believing a miss.
 */
#define COMMITTED_TRIES 3

static Snapshot
committed_now_begin(void)
{
	if (IsInParallelMode())
		return SnapshotSelf;
	return RegisterSnapshot(GetLatestSnapshot());
}

static void
committed_now_end(Snapshot snapshot)
{
	if (snapshot != SnapshotSelf)
		UnregisterSnapshot(snapshot);
}

static int
committed_now_tries(Snapshot snapshot)
{
	return snapshot == SnapshotSelf ? COMMITTED_TRIES : 1;
}

/*
 * True when the snapshot the current statement runs under may not show what
 * has committed by now: always in REPEATABLE READ and SERIALIZABLE; in READ
 * COMMITTED when the latest snapshot differs from it (another xmin, xmax or
 * set of running transactions: a transaction ended since) — a cursor
 * declared earlier and fetched now runs under its own old snapshot (an
 * attack run fetched, through one declared before a slug's reuse, the
 * previous holder's rows with the new holder's token). GetLatestSnapshot()
 * reuses its last result while no transaction ended, so a fresh statement
 * pays a comparison. In parallel mode, which allows no new snapshot, and in
 * recovery: stale (checked).
 */
static bool
statement_snapshot_stale(void)
{
	Snapshot	active;
	Snapshot	latest;

	if (IsolationUsesXactSnapshot() || !ActiveSnapshotSet() || IsInParallelMode())
		return true;
	active = GetActiveSnapshot();
	if (active->snapshot_type != SNAPSHOT_MVCC || active->takenDuringRecovery)
		return true;
	latest = GetLatestSnapshot();
	return latest->takenDuringRecovery
		|| latest->xmin != active->xmin || latest->xmax != active->xmax
		|| latest->xcnt != active->xcnt
		|| (active->xcnt > 0
			&& memcmp(latest->xip, active->xip, sizeof(TransactionId) * active->xcnt) != 0);
}

/* What the fast path needs of one tenant row. */
typedef struct TenantRow
{
	pg_uuid_t	id;
	bool		active;			/* status = 'active' */
	bool		has_limits;		/* limits IS NOT NULL */
	char	   *schema_name;	/* NULL for a shared tenant */
	bool		has_assigned;	/* slug_assigned_at read */
	int64		assigned_us;	/* slug_assigned_at, Unix microseconds */
} TenantRow;

/* The pads of one entry key (tenancy.entry_keys, 012_strict.sql). */
typedef struct KeyRow
{
	uint8		inner_pad[PG_SHA256_BLOCK_LENGTH];
	uint8		outer_pad[PG_SHA256_BLOCK_LENGTH];
} KeyRow;

/* Attribute number of column name of type typid in desc, 0 when absent. */
static AttrNumber
find_column(TupleDesc desc, const char *name, Oid typid)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->atttypid == typid ? att->attnum : 0;
	}
	return 0;
}

/* Reads the row found into the caller's struct; false: not usable. */
typedef bool (*RowReader) (TupleTableSlot *slot, TupleDesc desc, void *out);

/*
 * Look up the row of tenancy.<table> whose column key_column (of type
 * key_type: uuid, text or boolean) equals key, through the index tenancy.<index_name>
 * (a valid btree index led by that column), under snapshot (NULL: the
 * active snapshot — what the PL/pgSQL's query would see) — and hand it to read. Returns false
 * when the row is absent OR anything is not as expected (no such table,
 * index or column, no active snapshot): the caller then takes the PL/pgSQL
 * path, which knows what to say. Locks are kept to the end of the
 * transaction, as a query's are.
 */
static bool
lookup_row_as_of(const char *table, const char *index_name, const char *key_column, Oid key_type,
				 Datum key, RowReader read, void *out, Snapshot snapshot)
{
	Oid			nsp;
	Oid			relid;
	Oid			indexid;
	Relation	rel;
	Relation	idx;
	AttrNumber	key_att;
	ScanKeyData skey;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found = false;

	if (!ActiveSnapshotSet())
		return false;
	nsp = get_namespace_oid("tenancy", true);
	if (!OidIsValid(nsp))
		return false;
	relid = get_relname_relid(table, nsp);
	indexid = get_relname_relid(index_name, nsp);
	if (!OidIsValid(relid) || !OidIsValid(indexid))
		return false;
	/* Opened only as what they must be (table_open/index_open raise otherwise). */
	if (get_rel_relkind(relid) != RELKIND_RELATION || get_rel_relkind(indexid) != RELKIND_INDEX)
		return false;

	rel = table_open(relid, AccessShareLock);
	key_att = find_column(RelationGetDescr(rel), key_column, key_type);
	if (rel->rd_rel->relkind != RELKIND_RELATION || key_att == 0)
	{
		table_close(rel, NoLock);
		return false;
	}
	idx = index_open(indexid, AccessShareLock);
	if (idx->rd_rel->relam != BTREE_AM_OID ||
		idx->rd_index->indrelid != relid ||
		!idx->rd_index->indisvalid ||
		idx->rd_index->indnkeyatts < 1 ||
		idx->rd_index->indkey.values[0] != key_att ||
		idx->rd_opcintype[0] != key_type)
	{
		index_close(idx, NoLock);
		table_close(rel, NoLock);
		return false;
	}

	/*
	 * The index's own collation: a btree descends by it, so a scan key with
	 * another collation could miss the row.
	 */
	ScanKeyEntryInitialize(&skey, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0],
						   key_type == UUIDOID ? F_UUID_EQ : key_type == BOOLOID ? F_BOOLEQ : F_TEXTEQ,
						   key);
#if PG_VERSION_NUM >= 180000
	scan = index_beginscan(rel, idx, snapshot ? snapshot : GetActiveSnapshot(), NULL, 1, 0);
#else
	scan = index_beginscan(rel, idx, snapshot ? snapshot : GetActiveSnapshot(), 1, 0);
#endif
	index_rescan(scan, &skey, 1, NULL, 0);
	slot = table_slot_create(rel, NULL);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
		found = read(slot, RelationGetDescr(rel), out);
	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return found;
}

/* lookup_row_as_of under the active snapshot. */
static bool
lookup_row(const char *table, const char *index_name, const char *key_column, Oid key_type,
		   Datum key, RowReader read, void *out)
{
	return lookup_row_as_of(table, index_name, key_column, key_type, key, read, out, NULL);
}

static bool
read_tenant(TupleTableSlot *slot, TupleDesc desc, void *out)
{
	TenantRow  *row = (TenantRow *) out;
	AttrNumber	id = find_column(desc, "id", UUIDOID);
	AttrNumber	schema_name = find_column(desc, "schema_name", TEXTOID);
	AttrNumber	status = find_column(desc, "status", TEXTOID);
	AttrNumber	limits = find_column(desc, "limits", TEXTARRAYOID);
	AttrNumber	assigned = find_column(desc, "slug_assigned_at", TIMESTAMPTZOID);
	bool		isnull;
	Datum		d;

	if (id == 0 || schema_name == 0 || status == 0 || limits == 0)
		return false;
	d = slot_getattr(slot, id, &isnull);
	if (isnull)
		return false;			/* NOT NULL in the kit: not our table */
	memcpy(row->id.data, DatumGetUUIDP(d)->data, UUID_LEN);
	d = slot_getattr(slot, status, &isnull);
	row->active = !isnull && strcmp(TextDatumGetCString(d), "active") == 0;
	(void) slot_getattr(slot, limits, &isnull);
	row->has_limits = !isnull;
	d = slot_getattr(slot, schema_name, &isnull);
	/* Copied out: the slot's buffer is released by the caller. */
	row->schema_name = isnull ? NULL : TextDatumGetCString(d);
	/* When the tenant got its slug: tokens issued before it are refused. */
	row->has_assigned = false;
	if (assigned != 0)
	{
		d = slot_getattr(slot, assigned, &isnull);
		if (!isnull)
		{
			row->has_assigned = true;
			row->assigned_us = (int64) DatumGetTimestampTz(d) + UNIX_OFFSET_US;
		}
	}
	return true;
}

static bool
read_key(TupleTableSlot *slot, TupleDesc desc, void *out)
{
	KeyRow	   *row = (KeyRow *) out;
	AttrNumber	inner = find_column(desc, "inner_pad", BYTEAOID);
	AttrNumber	outer = find_column(desc, "outer_pad", BYTEAOID);
	bytea	   *ip;
	bytea	   *op;
	bool		inull;
	bool		onull;

	if (inner == 0 || outer == 0)
		return false;
	{
		Datum		id = slot_getattr(slot, inner, &inull);
		Datum		od = slot_getattr(slot, outer, &onull);

		/*
		 * NULL first: a NULL Datum is no pointer (an owner who dropped the
		 * NOT NULL and stored one crashed the backend here).
		 */
		if (inull || onull)
			return false;
		ip = DatumGetByteaPP(id);
		op = DatumGetByteaPP(od);
	}
	/* The table's CHECK says 64 bytes each; anything else is not ours. */
	if (VARSIZE_ANY_EXHDR(ip) != PG_SHA256_BLOCK_LENGTH ||
		VARSIZE_ANY_EXHDR(op) != PG_SHA256_BLOCK_LENGTH)
		return false;
	memcpy(row->inner_pad, VARDATA_ANY(ip), PG_SHA256_BLOCK_LENGTH);
	memcpy(row->outer_pad, VARDATA_ANY(op), PG_SHA256_BLOCK_LENGTH);
	return true;
}

static bool
lookup_tenant(const char *index_name, const char *key_column, Oid key_type,
			  Datum key, TenantRow *row)
{
	return lookup_row("tenants", index_name, key_column, key_type, key, read_tenant, row);
}

/*
 * Call tenancy.<name>(args of fcinfo), the PL/pgSQL implementation, and
 * return its result: every refusal and every uncommon case goes there. The
 * name is schema-qualified (the application role cannot create functions in
 * the tenancy schema) and looked up on each call, which only the slow path
 * pays.
 */
static Datum
call_plpgsql(const char *name, FunctionCallInfo fcinfo, Oid *argtypes)
{
	List	   *fname = list_make2(makeString("tenancy"), makeString(pstrdup(name)));
	Oid			fn = LookupFuncName(fname, fcinfo->nargs, argtypes, true);
	FmgrInfo	flinfo;
	LOCAL_FCINFO(call, 2);
	Datum		result;

	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("pgtenancy accelerator: function tenancy.%s is missing", name),
				 errhint("Run SELECT tenancy.set_accelerator(true) (or false) as the kit's owner.")));
	Assert(fcinfo->nargs <= 2);
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*call, &flinfo, fcinfo->nargs, fcinfo->fncollation, NULL, NULL);
	for (int i = 0; i < fcinfo->nargs; i++)
		call->args[i] = fcinfo->args[i];
	result = FunctionCallInvoke(call);
	fcinfo->isnull = call->isnull;
	return result;
}

/* set_config(name, value, true), as set_config_by_name does it. */
static void
set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value,
							 superuser() ? PGC_SUSET : PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * The fast path of entry: true when tenant slug exists, is active, has no
 * limits and its schema (if any) exists — nothing to refuse, nothing but
 * the three settings to make. Changes nothing.
 */
static bool
entry_fast(Datum slug, TenantRow *row)
{
	return lookup_tenant("tenants_slug_key", "slug", TEXTOID, slug, row)
		&& row->active && !row->has_limits
		&& (row->schema_name == NULL || OidIsValid(get_namespace_oid(row->schema_name, true)));
}

/*
 * The settings of entry, in the same order, with the same values as the
 * PL/pgSQL (sql/004_context.sql): app.tenant_id, app.tenant, then
 * search_path = "schema", public, pg_temp (public, pg_temp for a shared
 * tenant).
 */
static void
entry_settings(const TenantRow *row, const char *slug)
{
	char	   *id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&row->id)));

	set_local("app.tenant_id", id);
	set_local("app.tenant", slug);
	if (row->schema_name == NULL)
		set_local("search_path", "public, pg_temp");
	else
		set_local("search_path",
				  psprintf("%s, public, pg_temp", quote_identifier(row->schema_name)));
}

static Datum
return_uuid(const pg_uuid_t *id)
{
	pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

	memcpy(copy, id, sizeof(pg_uuid_t));
	return UUIDPGetDatum(copy);
}

/*
 * The C path takes only calls whose text arguments compare bytewise: under a
 * nondeterministic collation (CREATE COLLATION ... deterministic = false,
 * which any role may create in pg_temp) the PL/pgSQL's comparisons differ,
 * so such calls go to it.
 */
static bool
collation_bytewise(FunctionCallInfo fcinfo)
{
	Oid			coll = PG_GET_COLLATION();

	return !OidIsValid(coll) || get_collation_isdeterministic(coll);
}

/*
 * The entry functions are VOLATILE, and a VOLATILE PL/pgSQL function's
 * statements see what committed before each of them and what the calling
 * statement did so far (SPI: CommandCounterIncrement, then a fresh snapshot
 * in READ COMMITTED). Their C path reads the registry the same way, so a
 * tenant suspended after the calling statement started (a cursor fetched
 * later, a data-modifying CTE) is refused as the PL/pgSQL refuses it. In
 * parallel mode, where neither is allowed, the PL/pgSQL runs (and refuses).
 */
static bool
push_fresh_snapshot(void)
{
	if (IsInParallelMode())
		return false;
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	return true;
}

static void entry_slug_holds(Datum slug, const pg_uuid_t *id);
static void refuse_moved(const char *what);

/*
 * The PL/pgSQL entry, then in REPEATABLE READ and SERIALIZABLE the check
 * against the committed state (entry_slug_holds) on the tenant it entered,
 * by the slug it set (app.tenant: the registry's spelling).
 */
static Datum
slug_entry_plpgsql(FunctionCallInfo fcinfo)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		result = call_plpgsql("enter_tenant_plpgsql", fcinfo, argtypes);
	const char *slug;

	if (fcinfo->isnull || !IsolationUsesXactSnapshot())
		return result;
	slug = GetConfigOption("app.tenant", true, false);
	if (slug == NULL)
		refuse_moved("the tenant entered");
	entry_slug_holds(CStringGetTextDatum(slug), DatumGetUUIDP(result));
	return result;
}

/*
 * tenancy.enter_tenant_c(slug text) RETURNS uuid — tenancy.enter_tenant's fast
 * path. Not strict: NULL goes to the PL/pgSQL, which refuses it.
 */
Datum
pgtenancy_enter_tenant(PG_FUNCTION_ARGS)
{
	TenantRow	row;
	bool		fast;

	if (PG_ARGISNULL(0) || !collation_bytewise(fcinfo) || !push_fresh_snapshot())
		return slug_entry_plpgsql(fcinfo);
	fast = entry_fast(PG_GETARG_DATUM(0), &row);
	PopActiveSnapshot();
	if (!fast)
		return slug_entry_plpgsql(fcinfo);
	entry_slug_holds(PG_GETARG_DATUM(0), &row.id);
	entry_settings(&row, TextDatumGetCString(PG_GETARG_DATUM(0)));
	return return_uuid(&row.id);
}

/*
 * True when tenancy.enter_tenant(text) is the accelerator's SQL call of its C
 * function (011_accelerator.sql writes exactly this body), so its C path is
 * the entry; false when it is PL/pgSQL (the accelerator off, or Citus, whose
 * literal SET LOCAL statements tenancy.prepare_citus() wrote into it).
 */
static bool
is_accelerated_call(const char *name, int nargs, Oid *argtypes, const char *body)
{
	List	   *fname = list_make2(makeString("tenancy"), makeString(pstrdup(name)));
	Oid			fn = LookupFuncName(fname, nargs, argtypes, true);
	HeapTuple	tp;
	bool		result = false;

	if (!OidIsValid(fn))
		return false;
	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (HeapTupleIsValid(tp))
	{
		if (((Form_pg_proc) GETSTRUCT(tp))->prolang == SQLlanguageId)
		{
			bool		isnull;
			Datum		src = SysCacheGetAttr(PROCOID, tp, Anum_pg_proc_prosrc, &isnull);

			result = !isnull && strcmp(TextDatumGetCString(src), body) == 0;
		}
		ReleaseSysCache(tp);
	}
	return result;
}

static bool
enter_tenant_is_accelerated(void)
{
	Oid			argtypes[1] = {TEXTOID};

	return is_accelerated_call("enter_tenant", 1, argtypes,
							   "\n    SELECT tenancy.enter_tenant_c($1)\n");
}

/*
 * The entry of both procedures of entry: tenancy.enter_tenant(slug) through
 * its C path while that function is accelerated, the function itself
 * otherwise (so its refusals, and with Citus its SET LOCAL statements).
 */
static void
enter_slug(FunctionCallInfo fcinfo)
{
	Oid			argtypes[1] = {TEXTOID};
	LOCAL_FCINFO(entry, 1);

	InitFunctionCallInfoData(*entry, NULL, 1, PG_GET_COLLATION(), NULL, NULL);
	entry->args[0] = fcinfo->args[0];
	if (enter_tenant_is_accelerated())
		(void) pgtenancy_enter_tenant(entry);
	else
		(void) call_plpgsql("enter_tenant", entry, argtypes);
}

/*
 * CALL tenancy.enter(slug text, INOUT search_path text) — the procedure form
 * of entry that the kit's connections and sessions send after BEGIN: a CALL
 * is neither planned nor run as a query, so the server does less than for
 * SELECT tenancy.enter_tenant(...). The entry itself is tenancy.enter_tenant's:
 * its C path while that function is accelerated, the function itself
 * otherwise (so its refusals, and with Citus its SET LOCAL statements). The
 * one output column is the search_path the tenant got (the client keys its
 * prepared statements by it); its row type is made once per backend.
 */
Datum
pgtenancy_enter(PG_FUNCTION_ARGS)
{
	static TupleDesc result_desc = NULL;
	Datum		value;
	bool		isnull = false;

	enter_slug(fcinfo);
	if (result_desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	desc = CreateTemplateTupleDesc(1);

		TupleDescInitEntry(desc, (AttrNumber) 1, "search_path", TEXTOID, -1, 0);
		result_desc = BlessTupleDesc(desc);
		MemoryContextSwitchTo(old);
	}
	value = CStringGetTextDatum(GetConfigOptionByName("search_path", NULL, false));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(result_desc, &value, &isnull)));
}

/*
 * CALL tenancy.enter_known(slug text, search_path text) — tenancy.enter
 * without output (no row for the server to send nor the client to parse),
 * for a client that learnt the tenant's search_path from an earlier
 * tenancy.enter: the same entry, then PT023 when the search_path the tenant
 * got is not search_path (not checked when NULL), as the PL/pgSQL of
 * 004_context.sql raises it.
 */
/*
 * The check of the quiet procedures of entry: PT023 when the search_path
 * the transaction got is not argument argno (not checked when NULL), tenant
 * slug named in the message, at most 200 characters of the argument quoted
 * and the hint as the PL/pgSQL of that procedure writes them.
 */
static void
check_known_path(FunctionCallInfo fcinfo, int argno, const char *slug, const char *hint)
{
	char	   *now;
	char	   *expected;
	char	   *shown;

	if (PG_ARGISNULL(argno))
		return;
	now = GetConfigOptionByName("search_path", NULL, false);
	expected = TextDatumGetCString(PG_GETARG_DATUM(argno));
	if (strcmp(now, expected) == 0)
		return;
	shown = pnstrdup(expected, pg_mbcharcliplen(expected, strlen(expected), 200));
	ereport(ERROR,
			(errcode(MAKE_SQLSTATE('P', 'T', '0', '2', '3')),
			 errmsg("tenant %s has search_path %s, not %s%s",
					quote_literal_cstr(slug), quote_literal_cstr(now), quote_literal_cstr(shown),
					strlen(shown) < strlen(expected) ? "..." : ""),
			 errhint("%s", hint)));
}

Datum
pgtenancy_enter_known(PG_FUNCTION_ARGS)
{
	enter_slug(fcinfo);
	check_known_path(fcinfo, 1, TextDatumGetCString(PG_GETARG_DATUM(0)),
					 "Its schema changed: enter with CALL tenancy.enter(slug) to learn its search_path.");
	PG_RETURN_VOID();
}

/* True when s is a uuid in uuid_out's form (36 characters, lowercase or
 * uppercase hex, dashes at 8, 13, 18, 23); other spellings go to the
 * PL/pgSQL, whose cast accepts or refuses them. */
static bool
canonical_uuid(const char *s)
{
	for (int i = 0; i < 36; i++)
	{
		char		c = s[i];

		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (c != '-')
				return false;
		}
		else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
			return false;			/* also stops at the terminating NUL */
	}
	return s[36] == '\0';
}

/* True when the current role is a member of the kit's owner (the owner of
 * schema tenancy). */
static bool
kit_owner_role(void)
{
	Oid			nsp = get_namespace_oid("tenancy", true);
	HeapTuple	tp;
	Oid			owner = InvalidOid;

	tp = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (HeapTupleIsValid(tp))
	{
		owner = ((Form_pg_namespace) GETSTRUCT(tp))->nspowner;
		ReleaseSysCache(tp);
	}
	return OidIsValid(owner) && is_member_of_role(GetUserId(), owner);
}

/*
 * In a REPEATABLE READ or SERIALIZABLE transaction, false when tenant id is
 * no longer active in what has committed since the transaction's snapshot
 * was taken (a suspension, a soft or hard delete after the transaction
 * entered it), unless the current role is a member of the kit's owner (whose
 * SECURITY DEFINER functions act on such tenants, as the PL/pgSQL allows).
 * The policies of guarded tables read the status through this at every
 * statement, so such a transaction loses the tenant's rows at its next
 * statement, as a READ COMMITTED one does; the PL/pgSQL, which can only read
 * the transaction's snapshot, keeps them until the transaction ends (README,
 * strict entry). READ COMMITTED: the statement's snapshot is that fresh
 * already, nothing more is read.
 */
static bool
still_active(const pg_uuid_t *id)
{
	TenantRow	row;
	bool		active = false;
	Snapshot	snapshot;

	if (!statement_snapshot_stale())
		return true;
	snapshot = committed_now_begin();
	for (int i = 0; i < committed_now_tries(snapshot) && !active; i++)
		active = lookup_row_as_of("tenants", "tenants_pkey", "id", UUIDOID,
								  UUIDPGetDatum(unconstify(pg_uuid_t *, id)), read_tenant, &row,
								  snapshot)
			&& row.active;
	committed_now_end(snapshot);
	return active || kit_owner_role();
}

/*
 * tenancy.active_tenant_id_c() RETURNS uuid — tenancy.active_tenant_id's
 * (sql/005_shared.sql, plain mode) fast path: no tenant, NULL; a tenant that
 * is active, its id; anything else (suspended, deleted, gone, the owner's
 * exception, an odd app.tenant_id) the PL/pgSQL.
 */
Datum
pgtenancy_active_tenant_id(PG_FUNCTION_ARGS)
{
	const char *setting = GetConfigOption("app.tenant_id", true, false);
	char	   *text_id;
	Datum		id;
	TenantRow	row;

	if (setting == NULL || setting[0] == '\0')
		PG_RETURN_NULL();
	/* Copied: the setting's storage belongs to the GUC machinery. */
	text_id = pstrdup(setting);
	if (!canonical_uuid(text_id))
		return call_plpgsql("active_tenant_id_plpgsql", fcinfo, NULL);
	id = DirectFunctionCall1(uuid_in, CStringGetDatum(text_id));
	if (lookup_tenant("tenants_pkey", "id", UUIDOID, id, &row) && row.active)
	{
		if (!still_active(&row.id))
			PG_RETURN_NULL();
		PG_RETURN_DATUM(id);
	}
	return call_plpgsql("active_tenant_id_plpgsql", fcinfo, NULL);
}

/* ------------------------------------------------------------------------
 * Strict entry (sql/012_strict.sql): entry tokens
 *   pt2.<key name>.<slug>.<issued, Unix ms>.<expiry, Unix ms>.<nonce, hex>.<mac, hex>
 * mac = HMAC-SHA256 (RFC 2104) under the named key over everything before
 * the last dot. Tokens are attacker input: every length is bounded before
 * anything is read, and the fast path accepts a strict subset of what the
 * PL/pgSQL verifier accepts (anything else goes to it, which refuses or
 * accepts it itself); tests/integration/test_accelerator.py runs every token
 * case through both. A rule added to the PL/pgSQL's success path must be
 * added here as well (with its case in that test): this code accepts what
 * it checks, nothing more.
 * ------------------------------------------------------------------------
 */

/* Longer tokens go to the PL/pgSQL (sign_tenant_token's are ~150 bytes). */
#define TOKEN_MAX 512
#define MAC_HEX 64

typedef struct Token
{
	const char *key;			/* key name, key_len bytes */
	int			key_len;
	const char *slug;			/* slug, slug_len bytes */
	int			slug_len;
	int64		issued_ms;
	int64		expiry_ms;
	int			signed_len;		/* bytes before the last dot */
	const char *mac;			/* MAC_HEX lowercase hex digits */
} Token;

/*
 * Character classes of token parts, one table lookup a character (a strchr
 * a character was a tenth of a verification's cost): NAME for key names and
 * slugs ([a-z0-9_-]), DIGIT ([0-9]), HEX (lowercase [0-9a-f]). NUL is in no
 * class.
 */
#define CLASS_NAME	0x01
#define CLASS_DIGIT 0x02
#define CLASS_HEX	0x04

static const uint8 char_class[256] = {
	['-'] = CLASS_NAME, ['_'] = CLASS_NAME,
	['0'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX, ['1'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX,
	['2'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX, ['3'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX,
	['4'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX, ['5'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX,
	['6'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX, ['7'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX,
	['8'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX, ['9'] = CLASS_NAME | CLASS_DIGIT | CLASS_HEX,
	['a'] = CLASS_NAME | CLASS_HEX, ['b'] = CLASS_NAME | CLASS_HEX, ['c'] = CLASS_NAME | CLASS_HEX,
	['d'] = CLASS_NAME | CLASS_HEX, ['e'] = CLASS_NAME | CLASS_HEX, ['f'] = CLASS_NAME | CLASS_HEX,
	['g'] = CLASS_NAME, ['h'] = CLASS_NAME, ['i'] = CLASS_NAME, ['j'] = CLASS_NAME,
	['k'] = CLASS_NAME, ['l'] = CLASS_NAME, ['m'] = CLASS_NAME, ['n'] = CLASS_NAME,
	['o'] = CLASS_NAME, ['p'] = CLASS_NAME, ['q'] = CLASS_NAME, ['r'] = CLASS_NAME,
	['s'] = CLASS_NAME, ['t'] = CLASS_NAME, ['u'] = CLASS_NAME, ['v'] = CLASS_NAME,
	['w'] = CLASS_NAME, ['x'] = CLASS_NAME, ['y'] = CLASS_NAME, ['z'] = CLASS_NAME,
};

static bool
all_of(const char *s, int len, uint8 class)
{
	for (int i = 0; i < len; i++)
		if ((char_class[(unsigned char) s[i]] & class) == 0)
			return false;
	return true;
}

/* The value of 1-16 decimal digits (below 10^16: no overflow). */
static int64
digits_value(const char *s, int len)
{
	int64		v = 0;

	for (int i = 0; i < len; i++)
		v = v * 10 + (s[i] - '0');
	return v;
}

/*
 * Split t (len bytes, not NUL-terminated) into its seven dot-separated parts
 * and check each against the form sign_tenant_token writes: pt2; key name
 * 1-63 of [a-z0-9_-]; slug 1-63 of [a-z0-9_-]; issued and expiry 1-16
 * digits each; nonce 16-64 lowercase hex; mac 64 lowercase hex. Stricter
 * than the PL/pgSQL pattern on purpose (see above).
 */
static bool
parse_token(const char *t, int len, Token *tok)
{
	int			start[7];
	int			end[7];
	int			n = 0;

	if (len < 4 || len > TOKEN_MAX)
		return false;
	start[0] = 0;
	for (int i = 0; i < len; i++)
	{
		if (t[i] != '.')
			continue;
		if (n == 6)
			return false;		/* an eighth part */
		end[n] = i;
		start[++n] = i + 1;
	}
	if (n != 6)
		return false;
	end[6] = len;
#define PART_LEN(k) (end[k] - start[k])
	if (PART_LEN(0) != 3 || memcmp(t, "pt2", 3) != 0)
		return false;
	if (PART_LEN(1) < 1 || PART_LEN(1) > 63 ||
		!all_of(t + start[1], PART_LEN(1), CLASS_NAME))
		return false;
	if (PART_LEN(2) < 1 || PART_LEN(2) > 63 ||
		!all_of(t + start[2], PART_LEN(2), CLASS_NAME))
		return false;
	if (PART_LEN(3) < 1 || PART_LEN(3) > 16 || !all_of(t + start[3], PART_LEN(3), CLASS_DIGIT))
		return false;
	if (PART_LEN(4) < 1 || PART_LEN(4) > 16 || !all_of(t + start[4], PART_LEN(4), CLASS_DIGIT))
		return false;
	if (PART_LEN(5) < 16 || PART_LEN(5) > 64 || !all_of(t + start[5], PART_LEN(5), CLASS_HEX))
		return false;
	if (PART_LEN(6) != MAC_HEX || !all_of(t + start[6], MAC_HEX, CLASS_HEX))
		return false;
	tok->key = t + start[1];
	tok->key_len = PART_LEN(1);
	tok->slug = t + start[2];
	tok->slug_len = PART_LEN(2);
	tok->issued_ms = digits_value(t + start[3], PART_LEN(3));
	tok->expiry_ms = digits_value(t + start[4], PART_LEN(4));
	tok->signed_len = end[5];
	tok->mac = t + start[6];
#undef PART_LEN
	return true;
}

/* sha256(a || b) into out, with ctx (initialized here, reusable). */
static void
sha256_parts(pg_cryptohash_ctx *ctx, const uint8 *a, size_t alen, const uint8 *b, size_t blen,
			 uint8 *out)
{
	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, a, alen) < 0 ||
		pg_cryptohash_update(ctx, b, blen) < 0 ||
		pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "pgtenancy accelerator: could not compute SHA-256");
}

/*
 * True when tok's MAC is HMAC-SHA256 of t[0 .. signed_len) under key:
 * sha256(outer_pad || sha256(inner_pad || message)), compared with the
 * token's hex digits in constant time (the time taken says nothing of how
 * much of a forged MAC was right).
 */
static bool
mac_verifies(const char *t, const Token *tok, KeyRow *key)
{
	static const char hex[] = "0123456789abcdef";
	uint8		inner[PG_SHA256_DIGEST_LENGTH];
	uint8		outer[PG_SHA256_DIGEST_LENGTH];
	uint8		diff = 0;

	/* One context for both hashes: creating one is most of a short hash's
	 * cost. On error it is released with the resource owner. */
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL)
		elog(ERROR, "pgtenancy accelerator: could not create a SHA-256 context");
	sha256_parts(ctx, key->inner_pad, PG_SHA256_BLOCK_LENGTH, (const uint8 *) t, tok->signed_len, inner);
	sha256_parts(ctx, key->outer_pad, PG_SHA256_BLOCK_LENGTH, inner, sizeof(inner), outer);
	pg_cryptohash_free(ctx);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		diff |= (uint8) (tok->mac[2 * i] ^ hex[outer[i] >> 4]);
		diff |= (uint8) (tok->mac[2 * i + 1] ^ hex[outer[i] & 0xf]);
	}
	/* The caller's copy of the pads does not outlive the check (the memo,
	 * below, keeps its own). */
	explicit_bzero(key, sizeof(*key));
	explicit_bzero(inner, sizeof(inner));
	return diff == 0;
}

/*
 * The last token whose MAC verified in this backend, with the pads of the
 * key it verified under. A statement of a strict transaction verifies the
 * transaction's token again (the policies' InitPlan); the MAC of the same
 * bytes under the same pads is the same, so the hashing is skipped then.
 * The key and the tenant are still looked up every time (a dropped key, a
 * suspended tenant, a passed expiry take effect at the next statement), and
 * the pads compared: a key dropped and added again under its name with
 * another value does not pass. The comparison of the token takes the same
 * time however much of it matches. The memo holds the pads of the last key
 * that verified for the backend's life (as its buffers hold the key's table
 * page): they are never returned to SQL, but a core dump of the backend
 * would show them, like the page.
 */
static struct
{
	bool		valid;
	int			len;
	char		token[TOKEN_MAX];
	KeyRow		key;
}			last_verified;

static bool
same_bytes(const void *a, const void *b, size_t len)
{
	const uint8 *x = a;
	const uint8 *y = b;
	uint8		diff = 0;

	for (size_t i = 0; i < len; i++)
		diff |= x[i] ^ y[i];
	return diff == 0;
}

static bool
mac_verifies_cached(const char *t, int len, const Token *tok, KeyRow *key)
{
	KeyRow		copy;
	bool		hit;

	if (len > TOKEN_MAX)
		return false;			/* parse_token bounds it; never copy more */
	hit = last_verified.valid && last_verified.len == len
		&& same_bytes(last_verified.token, t, len)
		&& same_bytes(&last_verified.key, key, sizeof(KeyRow));
	if (hit)
	{
		explicit_bzero(key, sizeof(*key));
		return true;
	}
	memcpy(&copy, key, sizeof(KeyRow));
	if (!mac_verifies(t, tok, key))
	{
		explicit_bzero(&copy, sizeof(copy));
		return false;
	}
	last_verified.valid = true;
	last_verified.len = len;
	memcpy(last_verified.token, t, len);
	memcpy(&last_verified.key, &copy, sizeof(KeyRow));
	explicit_bzero(&copy, sizeof(copy));
	return true;
}

/*
 * The times of tok hold, as the PL/pgSQL checks them against
 * clock_timestamp() (rounded to the millisecond there; here the bounds are
 * taken one millisecond tighter, so a token at a boundary goes to it):
 * not expired, issued no later than its expiry nor more than 60 s ahead of
 * this clock, nor before the tenant got its slug.
 */
static bool
times_hold(const Token *tok, const TenantRow *row)
{
	int64		now_us = (int64) GetCurrentTimestamp() + UNIX_OFFSET_US;
	int64		now_ms = now_us / 1000;		/* floor: now_us > 0 */
	int64		assigned_ms;

	if (!row->has_assigned || row->assigned_us < 0)
		return false;
	assigned_ms = (row->assigned_us + 999) / 1000;	/* rounded up */
	return tok->expiry_ms > now_ms + 1
		&& tok->issued_ms <= tok->expiry_ms
		&& tok->issued_ms <= now_ms + 60000
		&& tok->issued_ms >= assigned_ms;
}

/*
 * The fast path of the verifier: t (len bytes) is a well-formed token whose
 * MAC verifies under an existing key, for an ACTIVE tenant (row filled in),
 * whose times hold. Any other token: false, and the PL/pgSQL says why.
 */
static bool
verify_parsed(const char *t, int len, const Token *tok, TenantRow *row)
{
	KeyRow		key;
	text	   *name;
	text	   *slug;

	name = cstring_to_text_with_len(tok->key, tok->key_len);
	if (!lookup_row("entry_keys", "entry_keys_pkey", "name", TEXTOID, PointerGetDatum(name),
					read_key, &key))
		return false;
	if (!mac_verifies_cached(t, len, tok, &key))
		return false;
	slug = cstring_to_text_with_len(tok->slug, tok->slug_len);
	return lookup_tenant("tenants_slug_key", "slug", TEXTOID, PointerGetDatum(slug), row)
		&& row->active && times_hold(tok, row);
}

static bool
verify_fast(const char *t, int len, TenantRow *row)
{
	Token		tok;

	return parse_token(t, len, &tok) && verify_parsed(t, len, &tok, row);
}

/* What the committed state says now of a token a transaction holds. */
typedef enum
{
	NOW_OK,						/* verifies, for tenant id, which is active */
	NOW_KEY_GONE,				/* its key was dropped */
	NOW_KEY_CHANGED,			/* its key's name holds another key (or it does not parse) */
	NOW_TENANT_INACTIVE,		/* tenant id is suspended or deleted */
	NOW_TENANT_MOVED			/* its slug names another tenant, or none */
} NowAnswer;

/*
 * In a REPEATABLE READ or SERIALIZABLE transaction, the token verification
 * again, against what has committed since the transaction's snapshot
 * (committed_now_begin): its key by name, its MAC, its slug's tenant and the
 * times. The snapshot's registry can be older than the token: a slug renamed
 * or destroyed and then given to a new tenant resolves, in the snapshot, to
 * its previous holder, whose rows a valid token of the new holder would
 * otherwise open (an attack run read and wrote them so, accelerator on and
 * off); a key dropped, or a tenant suspended, after the snapshot would stay
 * accepted. In READ COMMITTED every statement reads the latest anyway.
 */
static NowAnswer
token_holds_as_of(const char *t, int len, const Token *tok, const pg_uuid_t *id,
				  Snapshot snapshot)
{
	KeyRow		key;
	TenantRow	row;
	NowAnswer	answer;

	if (!lookup_row_as_of("entry_keys", "entry_keys_pkey", "name", TEXTOID,
						  PointerGetDatum(cstring_to_text_with_len(tok->key, tok->key_len)),
						  read_key, &key, snapshot))
		return NOW_KEY_GONE;
	if (!mac_verifies_cached(t, len, tok, &key))
		answer = NOW_KEY_CHANGED;
	/*
	 * The slug's holder now: the tenant the transaction is in, holding the
	 * slug since before the token was issued (the PL/pgSQL's PT034 test, its
	 * rounding: the millisecond of slug_assigned_at, floored). Expiry and
	 * issue time do not depend on the snapshot: the verification that just
	 * ran checked them.
	 */
	else if (!lookup_row_as_of("tenants", "tenants_slug_key", "slug", TEXTOID,
							   PointerGetDatum(cstring_to_text_with_len(tok->slug, tok->slug_len)),
							   read_tenant, &row, snapshot)
			 || memcmp(row.id.data, id->data, UUID_LEN) != 0
			 || (row.has_assigned && tok->issued_ms < row.assigned_us / 1000))
		answer = NOW_TENANT_MOVED;
	else
		answer = row.active ? NOW_OK : NOW_TENANT_INACTIVE;
	explicit_bzero(&key, sizeof(key));
	return answer;
}

static NowAnswer
token_holds_now(const char *t, int len, const pg_uuid_t *id)
{
	Token		tok;
	NowAnswer	answer = NOW_KEY_CHANGED;
	Snapshot	snapshot;

	if (!parse_token(t, len, &tok))
		return NOW_KEY_CHANGED;
	snapshot = committed_now_begin();
	for (int i = 0; i < committed_now_tries(snapshot); i++)
	{
		answer = token_holds_as_of(t, len, &tok, id, snapshot);
		if (answer == NOW_OK)
			break;
	}
	committed_now_end(snapshot);
	return answer;
}

/* The refusal of a snapshot older than a change of its tenant's slug. */
static void
refuse_moved(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access: %s changed since this transaction's snapshot", what),
			 errhint("Retry the transaction: its snapshot predates a rename, deletion or "
					 "reuse of the slug, or a suspension.")));
}

/*
 * The answer of token_holds_now for the statements of a transaction in
 * tenant id (the strict policy check): true to go on, false for no rows (a
 * tenant suspended or deleted since: as still_active); a dropped or changed
 * key raises what the PL/pgSQL verifier raises in READ COMMITTED (PT025), a
 * slug that moved 40001. No exception for the kit's owner: the PL/pgSQL
 * makes one only for a session without a token.
 */
static bool
statement_token_holds(const char *t, int len, const pg_uuid_t *id)
{
	Token		tok;
	NowAnswer	answer;

	if (!statement_snapshot_stale())
		return true;
	answer = token_holds_now(t, len, id);
	if (answer == NOW_OK)
		return true;
	switch (answer)
	{
		case NOW_KEY_GONE:
			(void) parse_token(t, len, &tok);
			ereport(ERROR,
					(errcode(MAKE_SQLSTATE('P', 'T', '0', '2', '5')),
					 errmsg("entry token refused: unknown key %s",
							quote_literal_cstr(pnstrdup(tok.key, tok.key_len)))));
			break;
		case NOW_KEY_CHANGED:
			ereport(ERROR,
					(errcode(MAKE_SQLSTATE('P', 'T', '0', '2', '5')),
					 errmsg("entry token refused: bad signature")));
			break;
		case NOW_TENANT_MOVED:
			refuse_moved("the tenant of the entry token");
			break;
		default:
			break;
	}
	return false;
}

/* At entry: anything but NOW_OK refuses (the key's PT025, else 40001). */
static void
entry_token_holds(const char *t, int len, const pg_uuid_t *id)
{
	if (IsolationUsesXactSnapshot() && statement_token_holds(t, len, id) == false)
		refuse_moved("the tenant of the entry token");
}

/*
 * Plain entry in a REPEATABLE READ or SERIALIZABLE transaction: slug still
 * names tenant id, active, in what has committed since the snapshot; 40001
 * otherwise (the snapshot's registry would enter the slug's previous holder).
 */
static void
entry_slug_holds(Datum slug, const pg_uuid_t *id)
{
	TenantRow	row;
	bool		holds = false;
	Snapshot	snapshot;

	if (!IsolationUsesXactSnapshot())
		return;
	snapshot = committed_now_begin();
	for (int i = 0; i < committed_now_tries(snapshot) && !holds; i++)
		holds = lookup_row_as_of("tenants", "tenants_slug_key", "slug", TEXTOID, slug,
								 read_tenant, &row, snapshot)
			&& memcmp(row.id.data, id->data, UUID_LEN) == 0 && row.active;
	committed_now_end(snapshot);
	if (!holds)
		refuse_moved(psprintf("tenant %s", quote_literal_cstr(TextDatumGetCString(slug))));
}

/*
 * tenancy.verify_entry_token_c(token text, at_entry boolean) RETURNS uuid —
 * tenancy.verify_entry_token's fast path: the tenant id of a valid token for
 * an active tenant; everything else is the PL/pgSQL verifier's answer.
 */
Datum
pgtenancy_verify_entry_token(PG_FUNCTION_ARGS)
{
	Oid			argtypes[2] = {TEXTOID, BOOLOID};
	TenantRow	row;
	text	   *token;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || !collation_bytewise(fcinfo))
		return call_plpgsql("verify_entry_token", fcinfo, argtypes);
	token = PG_GETARG_TEXT_PP(0);
	if (!verify_fast(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &row))
		return call_plpgsql("verify_entry_token", fcinfo, argtypes);
	return return_uuid(&row.id);
}

/*
 * The PL/pgSQL token entry, then in REPEATABLE READ and SERIALIZABLE the
 * check against the committed state (entry_token_holds) on the tenant it
 * entered; its settings go with the transaction when that refuses.
 */
static Datum
token_entry_plpgsql(FunctionCallInfo fcinfo)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		result = call_plpgsql("enter_tenant_token_plpgsql", fcinfo, argtypes);
	text	   *token;

	if (fcinfo->isnull || PG_ARGISNULL(0) || !IsolationUsesXactSnapshot())
		return result;
	token = PG_GETARG_TEXT_PP(0);
	entry_token_holds(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), DatumGetUUIDP(result));
	return result;
}

/*
 * tenancy.enter_tenant_token_c(token text, slug text) RETURNS uuid —
 * tenancy.enter_tenant_token's fast path: a valid token for an active
 * tenant that entry_fast would take too (same row: active, no limits, its
 * schema there), and slug NULL or the token's: the token
 * in app.tenant_token first, then entry's settings, as the PL/pgSQL does.
 * Anything else: the PL/pgSQL from the start (nothing was set).
 */
Datum
pgtenancy_enter_tenant_token(PG_FUNCTION_ARGS)
{
	TenantRow	row;
	text	   *token;
	char	   *t;
	int			len;
	Token		tok;
	char	   *slug;

	bool		fast;

	if (PG_ARGISNULL(0) || !collation_bytewise(fcinfo))
		return token_entry_plpgsql(fcinfo);
	token = PG_GETARG_TEXT_PP(0);
	len = VARSIZE_ANY_EXHDR(token);
	t = VARDATA_ANY(token);
	if (!parse_token(t, len, &tok) || !push_fresh_snapshot())
		return token_entry_plpgsql(fcinfo);
	fast = verify_parsed(t, len, &tok, &row);
	PopActiveSnapshot();
	if (!fast)
		return token_entry_plpgsql(fcinfo);
	slug = pnstrdup(tok.slug, tok.slug_len);
	if (!PG_ARGISNULL(1) && strcmp(TextDatumGetCString(PG_GETARG_DATUM(1)), slug) != 0)
		return token_entry_plpgsql(fcinfo);
	/* The verifier read the tenant's row by slug: entry_fast's tests on it. */
	if (row.has_limits ||
		(row.schema_name != NULL && !OidIsValid(get_namespace_oid(row.schema_name, true))))
		return token_entry_plpgsql(fcinfo);
	entry_token_holds(t, len, &row.id);
	set_local("app.tenant_token", text_to_cstring(token));
	entry_settings(&row, slug);
	return return_uuid(&row.id);
}

/*
 * CALL tenancy.enter_token(token text, slug text, search_path text) — the
 * token entry without output (012_strict.sql): tenancy.enter_tenant_token
 * through its C path while it is accelerated, the function itself otherwise,
 * then check_known_path on the tenant the token entered. No row for the
 * server to send nor the client to parse.
 */
Datum
pgtenancy_enter_token(PG_FUNCTION_ARGS)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	LOCAL_FCINFO(entry, 2);
	const char *slug;

	InitFunctionCallInfoData(*entry, NULL, 2, PG_GET_COLLATION(), NULL, NULL);
	entry->args[0] = fcinfo->args[0];
	entry->args[1] = fcinfo->args[1];
	if (is_accelerated_call("enter_tenant_token", 2, argtypes,
							"\n    SELECT tenancy.enter_tenant_token_c($1, $2)\n"))
		(void) pgtenancy_enter_tenant_token(entry);
	else
		(void) call_plpgsql("enter_tenant_token", entry, argtypes);
	slug = GetConfigOption("app.tenant", true, false);
	check_known_path(fcinfo, 2, slug ? slug : "",
					 "Its schema changed: enter with tenancy.enter_tenant_token(token) to learn its search_path.");
	PG_RETURN_VOID();
}

/*
 * The PL/pgSQL strict body for what the fast path does not take, and then,
 * in REPEATABLE READ and SERIALIZABLE, the same check against the committed
 * state as the fast path's (statement_token_holds) on the tenant it gave: a
 * spelling of app.tenant_id the fast path does not read (braces, no dashes)
 * sent an attack run there, past the check, into rows its snapshot still
 * showed after the key was dropped or the tenant suspended.
 */
static Datum
strict_plpgsql(FunctionCallInfo fcinfo, const char *token)
{
	char	   *t = token ? pnstrdup(token, strnlen(token, TOKEN_MAX + 1)) : NULL;
	Datum		result = call_plpgsql("active_tenant_id_strict_plpgsql", fcinfo, NULL);

	if (fcinfo->isnull || !IsolationUsesXactSnapshot() || t == NULL || t[0] == '\0')
		return result;			/* no tenant, or no token: the owner's exception */
	if (!statement_token_holds(t, (int) strlen(t), DatumGetUUIDP(result)))
	{
		fcinfo->isnull = true;
		return (Datum) 0;
	}
	return result;
}

/*
 * tenancy.active_tenant_id_strict_c() RETURNS uuid — the fast path of
 * active_tenant_id()'s body while strict entry is on (strict_active_tenant_body
 * in 012_strict.sql): no token and no tenant, NULL; a valid token for an
 * active tenant that app.tenant_id names, its id. Everything else (no token
 * with a tenant: the owner's exception or PT025; expired: PT028; another
 * tenant in app.tenant_id: PT027; a tenant no longer active) the PL/pgSQL
 * strict body, kept as tenancy.active_tenant_id_strict_plpgsql.
 */
Datum
pgtenancy_active_tenant_id_strict(PG_FUNCTION_ARGS)
{
	const char *token = GetConfigOption("app.tenant_token", true, false);
	const char *setting = GetConfigOption("app.tenant_id", true, false);
	TenantRow	row;
	size_t		len;
	char	   *t;
	char	   *id;

	if ((token == NULL || token[0] == '\0') && (setting == NULL || setting[0] == '\0'))
		PG_RETURN_NULL();
	if (token == NULL || token[0] == '\0' || setting == NULL || !canonical_uuid(setting))
		return strict_plpgsql(fcinfo, token);
	/* Bounded before it is copied: the setting can be any length. */
	len = strnlen(token, TOKEN_MAX + 1);
	if (len > TOKEN_MAX)
		return strict_plpgsql(fcinfo, token);
	/* Copied: the settings' storage belongs to the GUC machinery. */
	t = pnstrdup(token, len);
	id = pstrdup(setting);
	if (!verify_fast(t, (int) len, &row))
		return strict_plpgsql(fcinfo, token);
	if (memcmp(DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(id)))->data,
			   row.id.data, UUID_LEN) != 0)
		return strict_plpgsql(fcinfo, token);
	if (!statement_token_holds(t, (int) len, &row.id))
		PG_RETURN_NULL();
	return return_uuid(&row.id);
}

/* -- the migration fence ----------------------------------------------------
 *
 * tenancy.fence_target(stack text) (003_confinement.sql) runs for every DDL
 * command of a tenant migration, twice (the fence's ddl_command_start and
 * ddl_command_end triggers); its C fast path below gives the same answer
 * from the same inputs: the call stack the trigger read (PG_CONTEXT), the
 * current role, the two settings, the registry and the confinement row.
 */

/*
 * s LIKE '%pattern%', LIKE's '_' matching any one character (of the
 * database encoding); pattern is ASCII without '%' or '\\'. A match never
 * starts inside a multibyte character: pattern starts with an ASCII letter,
 * which no byte of such a character is (server encodings are ASCII-safe).
 */
static bool
like_contains(const char *s, const char *pattern)
{
	for (const char *start = s; *start; start++)
	{
		const char *c = start;
		const char *p = pattern;

		while (*p && *c)
		{
			if (*p == '_')
			{
				int			l = pg_mblen(c);

				if (strnlen(c, l) < (size_t) l)
					break;		/* a truncated character: no match */
				c += l;
			}
			else if (*c == *p)
				c++;
			else
				break;
			p++;
		}
		if (*p == '\0')
			return true;
	}
	return false;
}

static bool
starts_with(const char *s, size_t len, const char *prefix)
{
	size_t		plen = strlen(prefix);

	return len >= plen && memcmp(s, prefix, plen) == 0;
}

/*
 * The frame test of fence_target: the first line of stack that is a
 * PL/pgSQL frame other than the fence's own (tenancy.fence_* and
 * tenancy.called_from_migration) is a tenancy function other than
 * tenancy.execute_migration — the kit's own DDL, which the fence lets be.
 */
static bool
kit_frame_first(const char *stack)
{
	const char *line = stack;

	while (*line)
	{
		const char *end = strchr(line, '\n');
		size_t		len = end ? (size_t) (end - line) : strlen(line);

		if (starts_with(line, len, "PL/pgSQL function ")
			&& !starts_with(line, len, "PL/pgSQL function tenancy.fence_")
			&& !starts_with(line, len, "PL/pgSQL function tenancy.called_from_migration("))
			return starts_with(line, len, "PL/pgSQL function tenancy.")
				&& !starts_with(line, len, "PL/pgSQL function tenancy.execute_migration(");
		if (!end)
			break;
		line = end + 1;
	}
	return false;
}

static bool
read_migrator(TupleTableSlot *slot, TupleDesc desc, void *out)
{
	AttrNumber	att = find_column(desc, "migrator_role", NAMEOID);
	bool		isnull;
	Datum		d;

	if (att == 0)
		return false;
	d = slot_getattr(slot, att, &isnull);
	if (isnull)
		return false;
	strlcpy((char *) out, NameStr(*DatumGetName(d)), NAMEDATALEN);
	return true;
}

static bool
read_nothing(TupleTableSlot *slot, TupleDesc desc, void *out)
{
	return true;
}

static bool
create_allowed(Oid nsp, Oid role)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(NamespaceRelationId, nsp, role, ACL_CREATE) == ACLCHECK_OK;
#else
	return pg_namespace_aclcheck(nsp, role, ACL_CREATE) == ACLCHECK_OK;
#endif
}

/* Owner of schema nsp, InvalidOid when there is none. */
static Oid
schema_owner(Oid nsp)
{
	HeapTuple	tp = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid			owner = InvalidOid;

	if (HeapTupleIsValid(tp))
	{
		owner = ((Form_pg_namespace) GETSTRUCT(tp))->nspowner;
		ReleaseSysCache(tp);
	}
	return owner;
}

typedef enum
{
	TARGET_NO,					/* not the migration's schema */
	TARGET_YES,					/* the schema the migration may change */
	TARGET_UNKNOWN				/* ask the PL/pgSQL (its errors) */
} TargetAnswer;

/*
 * tenancy.is_migration_target(schema_name) (003_confinement.sql) in C: the
 * schema is the kit owner's, not tenancy or public, the migrator may create
 * in it and PUBLIC may not.
 */
static TargetAnswer
migration_target(const char *schema)
{
	Oid			nsp;
	Oid			kit;
	char		migrator[NAMEDATALEN];
	Oid			role;

	/* nspname = schema_name compares all of it: no schema has a longer name. */
	if (strcmp(schema, "tenancy") == 0 || strcmp(schema, "public") == 0
		|| strlen(schema) >= NAMEDATALEN)
		return TARGET_NO;
	nsp = get_namespace_oid(schema, true);
	kit = get_namespace_oid("tenancy", true);
	if (!OidIsValid(nsp) || !OidIsValid(kit) || schema_owner(nsp) != schema_owner(kit))
		return TARGET_NO;
	if (!lookup_row("confinement", "confinement_pkey", "singleton", BOOLOID, BoolGetDatum(true),
					read_migrator, migrator))
		return TARGET_UNKNOWN;
	role = get_role_oid(migrator, true);
	if (!OidIsValid(role))
		return TARGET_UNKNOWN;	/* has_schema_privilege raises: the PL/pgSQL */
	return create_allowed(nsp, role) && !create_allowed(nsp, ACL_ID_PUBLIC)
		? TARGET_YES : TARGET_NO;
}

/* True when the current role may SELECT from tenancy.tenants. */
static bool
may_read_tenants(void)
{
	Oid			kit = get_namespace_oid("tenancy", true);
	Oid			relid = OidIsValid(kit) ? get_relname_relid("tenants", kit) : InvalidOid;

	return OidIsValid(relid) && pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK;
}

/* A setting's value, NULL when unset or empty (nullif(current_setting(name, true), '')). */
static const char *
setting_or_null(const char *name)
{
	const char *value = GetConfigOption(name, true, false);

	return value == NULL || value[0] == '\0' ? NULL : pstrdup(value);
}

/*
 * tenancy.fence_target_c(stack text) RETURNS text — tenancy.fence_target's
 * fast path: NULL outside a migration and for the kit's own DDL, inside one
 * the tenant schema it may change or the empty string; what it cannot
 * answer as the PL/pgSQL would (no active snapshot, no confinement row, an
 * unknown migrator role, a NULL stack, a caller who may not read the
 * registry) the PL/pgSQL copy answers.
 */
Datum
pgtenancy_fence_target(PG_FUNCTION_ARGS)
{
	Oid			argtypes[1] = {TEXTOID};
	char	   *stack;
	const char *target;

	if (PG_ARGISNULL(0) || !collation_bytewise(fcinfo) || !ActiveSnapshotSet())
		return call_plpgsql("fence_target_plpgsql", fcinfo, argtypes);
	stack = TextDatumGetCString(PG_GETARG_DATUM(0));
	if (like_contains(stack, "function tenancy.execute_migration(text,text)"))
	{
		Oid			kit = get_namespace_oid("tenancy", true);

		if (OidIsValid(kit) && GetUserId() == schema_owner(kit) && kit_frame_first(stack))
			PG_RETURN_NULL();
		target = setting_or_null("pgtenancy.migration_schema");
		if (target != NULL)
		{
			switch (migration_target(target))
			{
				case TARGET_YES:
					PG_RETURN_TEXT_P(cstring_to_text(target));
				case TARGET_UNKNOWN:
					return call_plpgsql("fence_target_plpgsql", fcinfo, argtypes);
				case TARGET_NO:
					break;
			}
		}
		PG_RETURN_TEXT_P(cstring_to_text(""));
	}
	target = setting_or_null("pgtenancy.outside_migration_schema");
	if (target == NULL)
		PG_RETURN_NULL();
	/* The PL/pgSQL reads the registry as the caller: without the right, its error. */
	if (!may_read_tenants())
		return call_plpgsql("fence_target_plpgsql", fcinfo, argtypes);
	if (lookup_row("tenants", "tenants_schema_name_key", "schema_name", TEXTOID,
				   CStringGetTextDatum(target), read_nothing, NULL))
		PG_RETURN_TEXT_P(cstring_to_text(target));
	PG_RETURN_TEXT_P(cstring_to_text(""));
}
