"""FastAPI integration: find the request's tenant, enter it before the endpoint
runs, and hand out sessions in it (extra ``fastapi``).

::

    from fastapi import Depends, FastAPI
    from pgtenancy.fastapi import TenantInfo, Tenants, header, subdomain

    tenants = Tenants(
        "postgresql://app@db/shop",
        resolvers=[subdomain("example.com"), header("X-Tenant")],
    )
    app = FastAPI(lifespan=tenants.lifespan)
    tenants.install(app)

    @app.get("/invoices")
    def invoices(session: Session = Depends(tenants.session)) -> list[str]:
        return session.scalars(select(Invoice.number)).all()

    @app.get("/me")
    async def me(tenant: TenantInfo = Depends(tenants.tenant)) -> dict[str, object]:
        return {"slug": tenant.slug, "plan": tenant.public.get("plan")}

What happens per request (:class:`TenantMiddleware`, a pure ASGI middleware):

1. Paths in ``exclude`` (exact, or a prefix ending in ``/``) pass through untouched.
2. The resolvers run in order; the first that names a tenant wins (see
   :data:`Resolver`). None naming one: 400, or the request passes through
   without a tenant when ``required=False``.
3. The tenant is entered right away, in one round trip on a small autocommit
   pool (``SELECT tenancy.enter_tenant(..); SELECT .. FROM
   tenancy.tenant_info()``): the database refuses an unknown, suspended,
   deleted or provisioning tenant before any endpoint code runs, also for
   endpoints that never query. Refusals become JSON responses
   ``{"detail": ..., "tenant": slug, "code": sqlstate}``:

   =========================================  =====================================
   tenant                                     status
   =========================================  =====================================
   unknown (PT003), or not a valid slug       404 Not Found
   suspended (PT004)                          423 Locked (``suspended_status=403``
                                              for 403 Forbidden)
   deleted (PT005)                            410 Gone
   being provisioned (PT019)                  503 Service Unavailable, Retry-After
   schema missing (PT007)                     500 (the registry and the database
                                              disagree: an operator's problem)
   =========================================  =====================================

4. ``request.state.tenant`` is the :class:`TenantInfo` (id, slug, status and
   the public part of the metadata, ``metadata -> 'public'``) and the rest
   of the request runs in :func:`~pgtenancy.context.use_tenant` of the slug,
   so ``current_tenant()`` is right in sync and async endpoints.

Dependencies: :attr:`Tenants.tenant` (the :class:`TenantInfo`; without the
middleware it resolves and enters by itself), :attr:`Tenants.session` (a
SQLAlchemy ``Session`` in the tenant, sync endpoints) and
:attr:`Tenants.async_session` (an ``AsyncSession``). Each session transaction
enters the tenant again (``tenant_session``), so a tenant suspended during
the request is refused from its next transaction on.

Strict entry (``tenancy.set_strict_entry(true)``): give ``token=``, a
:data:`TokenSource` that yields the request's signed entry token —
:func:`token_header` (a gateway or auth service signed it and passes it in a
header) or :func:`token_signer` (this process holds the entry key and signs
a token for the tenant the resolvers named, after your authentication).
The request then enters with ``tenancy.enter_tenant_token`` (eagerly and in
every session transaction); with resolvers too, the token must be for the
tenant they name. Token refusals answer without revealing any tenant:

=========================================  =====================================
token                                      status
=========================================  =====================================
missing in strict mode, malformed, forged  401 Unauthorized (PT025),
or signed with an unknown key              ``WWW-Authenticate`` header
expired at entry (PT026)                   401
for another tenant than the one named      403 Forbidden (PT027)
issued before its tenant got its slug      403 (PT034: the slug's previous holder's)
expired during the request (PT028)         401
=========================================  =====================================

The body's ``detail`` is a fixed text per case (never the database's
message), ``tenant`` is the slug the resolvers named (None for a token
alone), and an unknown tenant without a valid token gets the same answer as a
known one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pgtenancy.context import use_tenant
from pgtenancy.dsn import libpq_dsn
from pgtenancy.entry_tokens import DEFAULT_KEY_NAME, resolve_token_tenant, sign_tenant_token
from pgtenancy.errors import (
    EntryTokenError,
    EntryTokenForged,
    InvalidTenantSlug,
    TenancyError,
    TenantDeleted,
    TenantNotFound,
    TenantSchemaMissing,
    TenantSuspended,
    translate,
)
from pgtenancy.pool import install_sqlalchemy_reset, pool_reset_async
from pgtenancy.queries import QUERIES
from pgtenancy.session import tenant_session
from pgtenancy.slugs import validate_slug

__all__ = [
    "DEFAULT_EXCLUDE",
    "Domain",
    "Resolver",
    "TenantInfo",
    "TenantMiddleware",
    "TenantRefused",
    "Tenants",
    "TokenSource",
    "header",
    "http_status",
    "jwt_claim",
    "path_prefix",
    "subdomain",
    "token_header",
    "token_signer",
]

#: SQLSTATE of "the tenant is being provisioned" (issue 10's ``TenantProvisioning``).
PROVISIONING = "PT019"

#: Paths the middleware leaves alone unless told otherwise: FastAPI's docs.
DEFAULT_EXCLUDE: tuple[str, ...] = ("/docs", "/docs/", "/redoc", "/openapi.json")

#: HTTP status of each entry-token refusal (issue 13): SQLSTATE -> status.
TOKEN_STATUS: Mapping[str, int] = {
    "PT025": 401,
    "PT026": 401,
    "PT027": 403,
    "PT028": 401,
    "PT034": 403,
}

#: What the client reads for each entry-token refusal: fixed texts, never the
#: database's message (which names keys and tenants).
_TOKEN_DETAIL = {
    "PT025": "entry token refused",
    "PT026": "entry token expired",
    "PT027": "entry token is not for this tenant",
    "PT028": "entry token expired during the request",
    "PT034": "entry token is not for this tenant",
}
_TOKEN_MISSING = "an entry token is required"

#: ``WWW-Authenticate`` of 401 answers (RFC 9110 asks for one).
WWW_AUTHENTICATE = 'Tenant-Token realm="pgtenancy"'

# Strict probe, run after a refused entry without a token: the function the
# policies call, with a made-up tenant id (the volatile subquery runs
# first). In strict mode it raises PT025 for any id, so an unknown,
# suspended or deleted slug gets the same answer as a known one (401, and
# the same two round trips); otherwise it returns NULL.
_STRICT_PROBE = (
    "SELECT tenancy.active_tenant_id() FROM (SELECT pg_catalog.set_config("
    "'app.tenant_id', '00000000-0000-0000-0000-000000000000', true)) AS probe"
)
_ENTER_TOKEN = "SELECT tenancy.enter_tenant_token(%s, %s)"
_TENANT_INFO = "SELECT id, slug, status, public FROM tenancy.tenant_info()"


@dataclass(frozen=True)
class TenantInfo:
    """The public fields of a tenant, as ``tenancy.tenant_info()`` gives them
    to the application role.

    Attributes:
        id: the tenant's id.
        slug: its slug.
        status: ``"active"`` (entering any other status is refused).
        public: ``metadata -> 'public'`` of the registry row (``{}`` when
            absent): what the application may know (plan, limits). The rest of
            the metadata stays with the owner.
    """

    id: UUID
    slug: str
    status: str
    public: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Domain:
    """What the subdomain resolver yields: look ``host`` up in
    ``tenancy.tenant_domains``; when it is not mapped, use ``fallback`` (a
    slug, or None to let the next resolver try)."""

    host: str
    fallback: str | None = None


#: A resolver takes the request and returns a slug, a :class:`Domain` to look
#: up, or None ("not mine": the next resolver tries). It may be async. It may
#: raise :class:`TenantRefused` to answer the request itself (e.g. 401).
Resolver = Callable[[Request], "str | Domain | Awaitable[str | Domain | None] | None"]

#: A token source takes the request and the slug the resolvers named (None
#: when there are none or none named one) and returns the request's entry
#: token (:func:`pgtenancy.sign_tenant_token`), or None for none. It may be
#: async, and may raise :class:`TenantRefused` to answer the request itself.
TokenSource = Callable[[Request, "str | None"], "str | Awaitable[str | None] | None"]


class TenantRefused(TenancyError):
    """The request gets no tenant: answered with ``status_code`` and a JSON body
    ``{"detail": message, "tenant": slug, "code": code}`` (by the middleware,
    or by the handler :meth:`Tenants.install` adds when a dependency raises it).

    Args:
        message: what the client reads in ``detail``.
        status_code: HTTP status (400 by default).
        slug: the tenant asked for, when known.
        code: the SQLSTATE of the database's refusal, when it was one.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        slug: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail, hint=hint)
        self.status_code = status_code
        self.slug = slug
        self.code = code
        self.headers = dict(headers) if headers else None

    def response(self) -> JSONResponse:
        """The JSON response for this refusal."""
        return JSONResponse(
            {"detail": self.message, "tenant": self.slug, "code": self.code},
            status_code=self.status_code,
            headers=self.headers,
        )


def http_status(exc: BaseException, *, suspended_status: int = 423) -> int | None:
    """HTTP status for a tenant refusal, None when ``exc`` is not one.

    Args:
        exc: a kit exception (or any exception carrying ``sqlstate``).
        suspended_status: status for a suspended tenant, 423 (Locked: the
            tenant exists, is known to the client and will be back) or 403.

    Returns:
        404 unknown or invalid slug, ``suspended_status`` suspended, 410
        deleted, 503 provisioning (PT019), 500 schema missing; for entry
        tokens (:data:`TOKEN_STATUS`) 401 forged, missing in strict mode,
        expired at entry or during the request (PT025, PT026, PT028), 403
        for another tenant (PT027, PT034); else None.
    """
    token_status = TOKEN_STATUS.get(getattr(exc, "sqlstate", None) or "")
    if token_status is not None:
        return token_status
    if isinstance(exc, TenantNotFound | InvalidTenantSlug):
        return 404
    if isinstance(exc, TenantSuspended):
        return suspended_status
    if isinstance(exc, TenantDeleted):
        return 410
    if getattr(exc, "sqlstate", None) == PROVISIONING:
        return 503
    if isinstance(exc, TenantSchemaMissing):
        return 500
    return None


# Resolvers -----------------------------------------------------------------


def header(name: str = "X-Tenant") -> Resolver:
    """The tenant slug is the value of request header ``name`` (None when absent)."""

    def resolve(request: Request) -> str | None:
        value = request.headers.get(name)
        return value.strip() if value else None

    return resolve


def _host(request: Request) -> str | None:
    raw = request.headers.get("host") or (request.url.hostname or "")
    if raw.startswith("["):  # IPv6 literal: never a tenant's name
        return None
    host = raw.rsplit(":", 1)[0] if ":" in raw else raw
    host = host.strip().lower().rstrip(".")
    return host or None


def subdomain(
    *base_domains: str, registry: bool = True, hyphens_to_underscores: bool = True
) -> Resolver:
    """The tenant comes from the request's host name.

    First the full host name is looked up in ``tenancy.tenant_domains``
    (``Tenancy.add_tenant_domain("acme_corp", "acme-corp.example.com")``, or
    a custom domain ``shop.acme.test``). When it is not mapped and the host is
    one label below one of ``base_domains`` (``acme.example.com`` under
    ``example.com``), that label is the slug, with hyphens read as
    underscores (``acme-corp`` -> ``acme_corp``) unless
    ``hyphens_to_underscores=False``.

    Args:
        base_domains: parent domains whose first-level labels name tenants;
            none: only the registry counts.
        registry: look the host up in ``tenant_domains`` first (one indexed
            query per request, granted to the application role by
            ``grant_app_role``); False: labels only, no query.
        hyphens_to_underscores: map ``-`` in a label to ``_``.

    The port is ignored; IP addresses and the base domains themselves yield None.
    """
    bases = tuple(b.strip().lower().strip(".") for b in base_domains)

    def from_label(host: str) -> str | None:
        for base in bases:
            if host.endswith("." + base):
                label = host[: -len(base) - 1]
                if "." in label:
                    return None
                return label.replace("-", "_") if hyphens_to_underscores else label
        return None

    def resolve(request: Request) -> str | Domain | None:
        host = _host(request)
        if host is None or host in bases:
            return None
        fallback = from_label(host)
        return Domain(host, fallback) if registry else fallback

    return resolve


def path_prefix(prefix: str = "/t", *, strip: bool = True) -> Resolver:
    """The tenant is the path segment after ``prefix``: ``/t/acme/invoices``.

    Args:
        prefix: a path such as ``"/t"`` (``"/"`` for the first segment).
        strip: route the rest of the path (``/invoices``): the prefix and the
            slug are moved into the ASGI ``root_path``, as a mount would.
    """
    base = "/" + prefix.strip("/")
    base = "" if base == "/" else base

    def resolve(request: Request) -> str | None:
        scope = request.scope
        root = scope.get("root_path", "")
        path: str = scope["path"]
        rest = path[len(root) :] if root and path.startswith(root) else path
        if not rest.startswith(base + "/"):
            return None
        slug, _, _tail = rest[len(base) + 1 :].partition("/")
        if not slug:
            return None
        if strip:
            scope["root_path"] = root + base + "/" + slug
        return slug

    return resolve


def jwt_claim(
    verify: Callable[[str], Mapping[str, Any]],
    claim: str = "tenant",
    *,
    header_name: str = "Authorization",
    scheme: str = "Bearer",
) -> Resolver:
    """The tenant is claim ``claim`` of a bearer token the caller's ``verify`` checks.

    Args:
        verify: takes the token and returns its verified claims, raising on a
            bad token (e.g. ``lambda t: jwt.decode(t, key, algorithms=["HS256"])``
            with PyJWT). pgtenancy decodes nothing itself.
        claim: the claim holding the slug.
        header_name: the header carrying the token.
        scheme: the authorization scheme (case-insensitive).

    No header, or another scheme: None (the next resolver tries). A token
    ``verify`` rejects: 401. A verified token without the claim: None.
    """

    def resolve(request: Request) -> str | None:
        value = request.headers.get(header_name)
        if not value:
            return None
        got, _, token = value.partition(" ")
        if got.lower() != scheme.lower() or not token.strip():
            return None
        try:
            claims = verify(token.strip())
        except Exception as exc:
            raise TenantRefused(
                f"invalid token: {exc}", status_code=401, headers={"WWW-Authenticate": scheme}
            ) from exc
        slug = claims.get(claim)
        return slug if isinstance(slug, str) and slug else None

    return resolve


# Token sources (strict entry) -------------------------------------------------


def token_header(name: str = "X-Tenant-Token", *, scheme: str | None = None) -> TokenSource:
    """The entry token is the value of request header ``name``.

    For a gateway or authentication service that holds the entry key, signs
    a short-lived token for the tenant it authenticated
    (:func:`pgtenancy.sign_tenant_token`) and passes it on; this process
    then needs no key at all.

    Args:
        name: the header.
        scheme: when given (e.g. ``"Bearer"`` with ``name="Authorization"``),
            the value must be ``<scheme> <token>`` (scheme case-insensitive);
            another scheme counts as no token.

    No header: None (no token: plain entry, refused with 401 in strict mode).
    """

    def source(request: Request, _slug: str | None) -> str | None:
        value = (request.headers.get(name) or "").strip()
        if scheme is not None:
            got, _, value = value.partition(" ")
            if got.lower() != scheme.lower():
                return None
            value = value.strip()
        return value or None

    return source


def token_signer(
    key: bytes, *, ttl_seconds: float = 30.0, key_name: str = DEFAULT_KEY_NAME
) -> TokenSource:
    """Sign an entry token for the tenant the resolvers named, in this process.

    For an application whose own authentication decides the tenant (e.g.
    :func:`jwt_claim`, or a resolver of yours that checks the session): the
    token then proves to the database that the tenant was chosen here, so
    SQL injected into the request cannot move it into another tenant. The
    key stays in this process's memory, out of the database role's reach.
    A resolver that lets the client name any tenant (:func:`header` alone)
    gains nothing from it but that protection against injected SQL.

    Args:
        key: the entry key (32 bytes or more; ``tenancy.add_entry_key(key_name,
            key)``). Load it from a secret store or a file, not from code.
        ttl_seconds: lifetime of each request's token, in seconds: it must
            cover the request (every session transaction enters with it;
            after it expires the request gets 401).
        key_name: the name the key was added under.

    No slug named: None. The returned callable's ``repr`` does not show the key.

    Raises:
        ValueError: short key, bad key name or ttl, at once.
    """
    sign_tenant_token(key, "probe", ttl_seconds, key_name)  # check the arguments now
    return _Signer(bytes(key), ttl_seconds, key_name)


class _Signer:
    __slots__ = ("_key", "key_name", "ttl_seconds")

    def __init__(self, key: bytes, ttl_seconds: float, key_name: str) -> None:
        self._key = key
        self.ttl_seconds = ttl_seconds
        self.key_name = key_name

    def __call__(self, _request: Request, slug: str | None) -> str | None:
        if slug is None:
            return None
        return sign_tenant_token(self._key, slug, self.ttl_seconds, self.key_name)

    def __repr__(self) -> str:
        return f"token_signer(key_name={self.key_name!r}, ttl_seconds={self.ttl_seconds!r})"


# The integration -------------------------------------------------------------


class Tenants:
    """Tenant resolution, eager entry, sessions and their engines for one FastAPI app.

    Args:
        database: libpq DSN or URL the application connects with (the
            application role, granted with ``tenancy.grant_app_role``).
        resolvers: tried in order (:data:`Resolver`): :func:`header`,
            :func:`subdomain`, :func:`path_prefix`, :func:`jwt_claim`, or any
            callable of yours. May be empty when ``token`` is given (the
            tenant is the token's).
        token: strict entry: where the request's entry token comes from
            (:data:`TokenSource`: :func:`token_header`, :func:`token_signer`
            or a callable of yours). The request enters with the token; with
            resolvers too, the token must be for the tenant they name (else
            403). None: plain entry by slug.
        exclude: paths the middleware leaves alone (exact; a path ending in
            ``/`` covers everything below it).
        required: a request no resolver names a tenant for gets 400 (401
            when ``token`` is given and there is no token either); False
            lets it through without a tenant.
        suspended_status: 423 (default) or 403 for a suspended tenant.
        engine, async_engine: your own SQLAlchemy engines (psycopg driver) for
            the sessions; by default the lifespan makes pooled ones from
            ``database`` (``engine_options`` passed to ``create_engine``) and
            disposes them at shutdown. Your own are not disposed.
        pool_size: connections of the small autocommit pool that checks tenants.

    Attributes:
        tenant: dependency giving the request's :class:`TenantInfo`.
        session: dependency (sync generator) giving a ``Session`` in the tenant.
        async_session: dependency giving an ``AsyncSession`` in the tenant.
    """

    def __init__(
        self,
        database: str,
        *,
        resolvers: Sequence[Resolver] = (),
        token: TokenSource | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        required: bool = True,
        suspended_status: int = 423,
        engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        engine_options: Mapping[str, Any] | None = None,
        pool_size: int = 4,
    ) -> None:
        if not resolvers and token is None:
            raise ValueError("Tenants needs at least one resolver, or a token source")
        if suspended_status not in (403, 423):
            raise ValueError("suspended_status must be 403 or 423")
        self.dsn = libpq_dsn(database)
        self.resolvers = tuple(resolvers)
        self.token = token
        self.exclude = tuple(exclude)
        self.required = required
        self.suspended_status = suspended_status
        self._own_engine = engine is None
        self._own_async_engine = async_engine is None
        self._engine = engine
        self._async_engine = async_engine
        self._engine_options = dict(engine_options or {})
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Any] | None = None
        self._pool_lock = asyncio.Lock()
        self.tenant, self.session, self.async_session = self._dependencies()

    # Engines and pools ---------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The sync engine of :attr:`session` (made on first use)."""
        if self._engine is None:
            dsn = self.dsn
            self._engine = create_engine(
                "postgresql+psycopg://",
                creator=lambda: psycopg.connect(dsn),
                **self._engine_options,
            )
            # A request's session state (prepared statements, settings, temp
            # objects) must not reach the next request's tenant: an attack
            # run swapped a psycopg prepared statement and ran its own SQL
            # in the next tenant's request.
            install_sqlalchemy_reset(self._engine)
        return self._engine

    @property
    def async_engine(self) -> AsyncEngine:
        """The async engine of :attr:`async_session` (made on first use)."""
        if self._async_engine is None:
            dsn = self.dsn

            async def connect() -> psycopg.AsyncConnection[Any]:
                return await psycopg.AsyncConnection.connect(dsn)

            self._async_engine = create_async_engine(
                "postgresql+psycopg://", async_creator=connect, **self._engine_options
            )
            install_sqlalchemy_reset(self._async_engine.sync_engine)
        return self._async_engine

    async def open(self) -> None:
        """Open the pool that checks tenants (the lifespan does it; idempotent)."""
        async with self._pool_lock:
            if self._pool is None:
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs={"autocommit": True},
                    reset=pool_reset_async,
                    open=False,
                )
                await pool.open(wait=True)
                self._pool = pool

    async def close(self) -> None:
        """Close the pool and dispose the engines this object made."""
        async with self._pool_lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
        if self._own_async_engine and self._async_engine is not None:
            await self._async_engine.dispose()
            self._async_engine = None
        if self._own_engine and self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """FastAPI lifespan: ``FastAPI(lifespan=tenants.lifespan)``. Opens the
        check pool and the engines at start-up, closes them at shutdown. To
        combine with your own lifespan, ``async with tenants.lifespan(app):``
        inside it."""
        await self.open()
        _ = self.engine, self.async_engine
        try:
            yield
        finally:
            await self.close()

    def install(self, app: Any) -> None:
        """Add :class:`TenantMiddleware` for this object to FastAPI/Starlette
        ``app``, and handlers answering :class:`TenantRefused` raised by the
        dependencies with the middleware's JSON body, and an entry-token
        error (:class:`~pgtenancy.errors.EntryTokenError`, PT025-PT028, PT034) that
        escapes an endpoint with 401/403 (never 500)."""

        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, TenantRefused)
            return exc.response()

        async def handle_token(request: Request, exc: Exception) -> JSONResponse:
            info = getattr(request.state, "tenant", None)
            token = getattr(request.state, "tenant_token", None)
            slug = info.slug if isinstance(info, TenantInfo) else None
            refused = self.refusal(exc, slug, token=token)
            assert refused is not None
            return refused.response()

        app.add_exception_handler(TenantRefused, handle)
        app.add_exception_handler(EntryTokenError, handle_token)
        app.add_middleware(TenantMiddleware, tenants=self)

    # Resolution and entry -------------------------------------------------

    def excluded(self, path: str) -> bool:
        """Whether the middleware leaves ``path`` alone."""
        for pattern in self.exclude:
            if path == pattern or (pattern.endswith("/") and path.startswith(pattern)):
                return True
        return False

    async def resolve(self, request: Request) -> str | None:
        """The slug the resolvers name for ``request``, or None.

        Raises:
            TenantRefused: a resolver refused the request (e.g. a bad token).
        """
        for resolver in self.resolvers:
            found = resolver(request)
            if inspect.isawaitable(found):
                found = await found
            if isinstance(found, Domain):
                slug = await self._lookup_domain(found.host)
                found = slug if slug is not None else found.fallback
            if found:
                return str(found)
        return None

    async def _lookup_domain(self, host: str) -> str | None:
        await self.open()
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(QUERIES["resolve_domain"], {"domain": host})
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
        return None if row is None else row[0]

    async def enter(self, slug: str | None = None, *, token: str | None = None) -> TenantInfo:
        """Enter ``slug`` (or the tenant of entry token ``token``) once, now,
        and return its public fields.

        Args:
            slug: the tenant; with ``token``, optional (the token's tenant),
                and when given the token must be for it.
            token: an entry token (:func:`pgtenancy.sign_tenant_token`),
                verified by the database (``tenancy.enter_tenant_token``).

        Raises:
            pgtenancy.errors.InvalidTenantSlug: not a valid slug (no SQL runs).
            pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
                TenantSchemaMissing: PT003/PT004/PT005/PT007; PT019 (being
                provisioned) as its kit class when that exists.
            pgtenancy.errors.EntryTokenForged: a malformed or forged token, or
                (strict mode) none (PT025); EntryTokenExpired (PT026),
                EntryTokenWrongTenant (PT027): the token was refused.
            ValueError: neither slug nor token.
        """
        query: sql.Composable | None = None
        if token is not None:
            resolve_token_tenant(slug, token)  # malformed, or another tenant: no SQL
        elif slug is not None:
            query = sql.SQL(QUERIES["enter_tenant_info"]).format(
                slug=sql.Literal(validate_slug(slug))
            )
        else:
            raise ValueError("enter() needs a slug or a token")
        await self.open()
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn:
                if query is None:
                    # The token as a bind parameter, never in the statement
                    # text (pg_stat_activity shows it to the role's other
                    # sessions); one transaction, pipelined: one round trip.
                    async with conn.pipeline(), conn.transaction():
                        # A plain AsyncCursor: server-side binding whatever
                        # cursor_factory the pool's connections were given.
                        await psycopg.AsyncCursor(conn).execute(
                            _ENTER_TOKEN, (token, slug), prepare=False
                        )
                        cur = await psycopg.AsyncCursor(conn).execute(_TENANT_INFO, prepare=False)
                    row = await cur.fetchone()
                else:
                    cur = conn.cursor()
                    await cur.execute(query)
                    cur.nextset()
                    row = await cur.fetchone()
        except psycopg.Error as exc:
            err = translate(exc)
            if token is None and http_status(err) is not None:
                # Refused without a token: in strict mode say only that a
                # token is needed, whatever the database found of the slug.
                await self._strict_probe(exc)
            raise err from exc
        assert row is not None
        return TenantInfo(id=row[0], slug=row[1], status=row[2], public=row[3] or {})

    async def _strict_probe(self, cause: BaseException) -> None:
        """Raise EntryTokenForged (PT025) when strict entry refuses entry without a token."""
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_STRICT_PROBE)
        except psycopg.Error as exc:
            if exc.sqlstate == EntryTokenForged.sqlstate:
                raise EntryTokenForged(_TOKEN_MISSING) from cause
            raise translate(exc) from exc

    def refusal(
        self, exc: BaseException, slug: str | None, *, token: str | None = None
    ) -> TenantRefused | None:
        """The :class:`TenantRefused` for kit error ``exc``, None when it is no refusal.

        Args:
            exc: the error (a kit exception, or any carrying ``sqlstate``).
            slug: the tenant the resolvers named, echoed in the body.
            token: the entry token the request presented, if any. Entry-token
                refusals (PT025-PT028, PT034) get a fixed ``detail``; PT025 without a
                token reads "an entry token is required".
        """
        status = http_status(exc, suspended_status=self.suspended_status)
        if status is None:
            return None
        code = getattr(exc, "sqlstate", None)
        headers: dict[str, str] | None = None
        if code in TOKEN_STATUS:
            message = _TOKEN_MISSING if token is None else _TOKEN_DETAIL[str(code)]
            if status == 401:
                headers = {"WWW-Authenticate": WWW_AUTHENTICATE}
        else:
            headers = {"Retry-After": "5"} if status == 503 else None
            message = exc.message if isinstance(exc, TenancyError) else str(exc)
        return TenantRefused(message, status_code=status, slug=slug, code=code, headers=headers)

    async def token_of(self, request: Request, slug: str | None) -> str | None:
        """The request's entry token from the ``token`` source (None without one).

        Raises:
            TenantRefused: the source refused the request.
        """
        if self.token is None:
            return None
        found = self.token(request, slug)
        if inspect.isawaitable(found):
            found = await found
        return str(found) if found else None

    async def identify(self, request: Request) -> TenantInfo | None:
        """Resolve and enter the request's tenant (with its entry token when
        there is a token source); None when no resolver names one, there is
        no token, and ``required`` is False. Sets ``request.state.tenant_token``
        (the token, or None), which the session dependencies enter with.

        Raises:
            TenantRefused: no tenant named (400; 401 when a token source found
                no token either), a token refused (401/403), or the database
                refused the tenant.
        """
        slug = await self.resolve(request)
        token: str | None = None
        try:
            token = await self.token_of(request, slug)
            if slug is None and token is None:
                if not self.required:
                    return None
                if self.token is None:
                    raise TenantRefused("no tenant in the request")
                raise EntryTokenForged(_TOKEN_MISSING)
            info = await self.enter(slug, token=token)
        except TenantRefused:
            raise
        except Exception as exc:
            refused = self.refusal(exc, slug, token=token)
            if refused is None:
                raise
            raise refused from exc
        request.state.tenant_token = token
        return info

    async def tenant_of(self, request: Request) -> TenantInfo:
        """``request.state.tenant``, resolving and entering it when the
        middleware did not (excluded path, no middleware).

        Raises:
            TenantRefused: as :meth:`identify`; 400 when no tenant is named.
        """
        info = getattr(request.state, "tenant", None)
        if isinstance(info, TenantInfo):
            return info
        info = await self.identify(request)
        if info is None:
            raise TenantRefused("no tenant in the request")
        request.state.tenant = info
        return info

    def _token_refused(self, exc: BaseException, info: TenantInfo, token: str | None) -> None:
        """Raise the 401/403 refusal for an entry-token error (PT025-PT028, PT034, kit
        class or raw driver error) the endpoint's session met; else return."""
        err = translate(exc)
        if isinstance(err, EntryTokenError):
            refused = self.refusal(err, info.slug, token=token)
            if refused is not None:
                raise refused from exc

    def _dependencies(
        self,
    ) -> tuple[
        Callable[[Request], Awaitable[TenantInfo]],
        Callable[..., Iterator[Session]],
        Callable[..., AsyncIterator[AsyncSession]],
    ]:
        from fastapi import Depends

        async def tenant(request: Request) -> TenantInfo:
            return await self.tenant_of(request)

        def session(request: Request, info: TenantInfo = Depends(tenant)) -> Iterator[Session]:
            token = getattr(request.state, "tenant_token", None)
            with tenant_session(self.engine, info.slug, token=token) as s:
                try:
                    yield s
                except Exception as exc:
                    self._token_refused(exc, info, token)
                    raise

        async def async_session(
            request: Request, info: TenantInfo = Depends(tenant)
        ) -> AsyncIterator[AsyncSession]:
            token = getattr(request.state, "tenant_token", None)
            async with tenant_session(self.async_engine, info.slug, token=token) as s:
                try:
                    yield s
                except Exception as exc:
                    self._token_refused(exc, info, token)
                    raise

        return tenant, session, async_session


class TenantMiddleware:
    """Pure ASGI middleware: resolve, enter eagerly, map refusals, set
    ``request.state.tenant`` and the tenant context (see the module docstring).

    Args:
        app: the wrapped ASGI app.
        tenants: the :class:`Tenants` configuration.

    Only HTTP requests are handled; websockets and lifespan events pass through.
    """

    def __init__(self, app: ASGIApp, tenants: Tenants) -> None:
        self.app = app
        self.tenants = tenants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.tenants.excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            info = await self.tenants.identify(request)
        except TenantRefused as refused:
            await refused.response()(scope, receive, send)
            return
        if info is None:
            await self.app(scope, receive, send)
            return
        request.state.tenant = info
        async with use_tenant(info.slug):
            await self.app(scope, receive, send)
