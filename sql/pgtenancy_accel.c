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
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgtenancy_enter_tenant);
PG_FUNCTION_INFO_V1(pgtenancy_active_tenant_id);
PG_FUNCTION_INFO_V1(pgtenancy_accel_version);

/* Columns of tenancy.tenants the fast path reads (by name, type-checked). */
typedef struct TenantsColumns
{
	AttrNumber	id;
	AttrNumber	slug;
	AttrNumber	schema_name;
	AttrNumber	status;
	AttrNumber	limits;
} TenantsColumns;

/* What the fast path needs of one tenant row. */
typedef struct TenantRow
{
	pg_uuid_t	id;
	bool		active;			/* status = 'active' */
	bool		has_limits;		/* limits IS NOT NULL */
	char	   *schema_name;	/* NULL for a shared tenant */
} TenantRow;

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

/*
 * Look up the row of tenancy.tenants whose column key_column (uuid or text)
 * equals key, through index index_name (a valid btree index led by that
 * column), under the active snapshot — what the PL/pgSQL's query would see.
 * Returns false when the row is absent OR anything is not as expected (no
 * such table, index or column, no active snapshot): the caller then takes
 * the PL/pgSQL path, which knows what to say. Locks are kept to the end of
 * the transaction, as a query's are.
 */
static bool
lookup_tenant(const char *index_name, const char *key_column, Oid key_type,
			  Datum key, TenantRow *row)
{
	Oid			nsp;
	Oid			relid;
	Oid			indexid;
	Relation	rel;
	Relation	idx;
	TenantsColumns cols;
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
	relid = get_relname_relid("tenants", nsp);
	indexid = get_relname_relid(index_name, nsp);
	if (!OidIsValid(relid) || !OidIsValid(indexid))
		return false;

	rel = table_open(relid, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION)
	{
		table_close(rel, NoLock);
		return false;
	}
	cols.id = find_column(RelationGetDescr(rel), "id", UUIDOID);
	cols.slug = find_column(RelationGetDescr(rel), "slug", TEXTOID);
	cols.schema_name = find_column(RelationGetDescr(rel), "schema_name", TEXTOID);
	cols.status = find_column(RelationGetDescr(rel), "status", TEXTOID);
	cols.limits = find_column(RelationGetDescr(rel), "limits", TEXTARRAYOID);
	key_att = find_column(RelationGetDescr(rel), key_column, key_type);
	if (cols.id == 0 || cols.slug == 0 || cols.schema_name == 0 ||
		cols.status == 0 || cols.limits == 0 || key_att == 0)
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
						   key_type == UUIDOID ? F_UUID_EQ : F_TEXTEQ, key);

#if PG_VERSION_NUM >= 180000
	scan = index_beginscan(rel, idx, GetActiveSnapshot(), NULL, 1, 0);
#else
	scan = index_beginscan(rel, idx, GetActiveSnapshot(), 1, 0);
#endif
	index_rescan(scan, &skey, 1, NULL, 0);
	slot = table_slot_create(rel, NULL);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d;

		found = true;
		d = slot_getattr(slot, cols.id, &isnull);
		if (isnull)
			found = false;		/* NOT NULL in the kit: not our table */
		else
			memcpy(row->id.data, DatumGetUUIDP(d)->data, UUID_LEN);
		d = slot_getattr(slot, cols.status, &isnull);
		row->active = !isnull && strcmp(TextDatumGetCString(d), "active") == 0;
		(void) slot_getattr(slot, cols.limits, &isnull);
		row->has_limits = !isnull;
		d = slot_getattr(slot, cols.schema_name, &isnull);
		/* Copied out: the slot's buffer is released below. */
		row->schema_name = isnull ? NULL : TextDatumGetCString(d);
	}
	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return found;
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
 * tenancy.enter_tenant_c(slug text) RETURNS uuid — tenancy.enter_tenant's fast
 * path. The same settings, in the same order, with the same values as the
 * PL/pgSQL (sql/004_context.sql): app.tenant_id, app.tenant, then
 * search_path = "schema", public, pg_temp (public, pg_temp for a shared
 * tenant). Not strict: NULL goes to the PL/pgSQL, which refuses it.
 */
Datum
pgtenancy_enter_tenant(PG_FUNCTION_ARGS)
{
	Oid			argtypes[1] = {TEXTOID};
	TenantRow	row;
	char	   *slug;
	char	   *id;
	char	   *path;

	if (PG_ARGISNULL(0))
		return call_plpgsql("enter_tenant_plpgsql", fcinfo, argtypes);
	if (!lookup_tenant("tenants_slug_key", "slug", TEXTOID, PG_GETARG_DATUM(0), &row)
		|| !row.active || row.has_limits
		|| (row.schema_name != NULL && !OidIsValid(get_namespace_oid(row.schema_name, true))))
		return call_plpgsql("enter_tenant_plpgsql", fcinfo, argtypes);

	slug = TextDatumGetCString(PG_GETARG_DATUM(0));
	id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&row.id)));
	if (row.schema_name == NULL)
		path = "public, pg_temp";
	else
		path = psprintf("%s, public, pg_temp", quote_identifier(row.schema_name));
	set_local("app.tenant_id", id);
	set_local("app.tenant", slug);
	set_local("search_path", path);
	PG_RETURN_UUID_P((pg_uuid_t *) memcpy(palloc(sizeof(pg_uuid_t)), &row.id, sizeof(pg_uuid_t)));
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
		PG_RETURN_DATUM(id);
	return call_plpgsql("active_tenant_id_plpgsql", fcinfo, NULL);
}

/* tenancy.accelerator_library_version() — which build is loaded. */
Datum
pgtenancy_accel_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text("1"));
}
