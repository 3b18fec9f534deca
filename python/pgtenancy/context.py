"""The tenant context of the running code, on :mod:`contextvars`.

``use_tenant("acme")`` pushes a tenant for the current thread or asyncio task
and pops it on exit; blocks nest like a stack. ``current_tenant()`` reads the
top. Sessions and connections opened without an explicit slug use it. Entering
and leaving send :data:`~pgtenancy.signals.tenant_activated` and
:data:`~pgtenancy.signals.tenant_deactivated` in this process.

This is Python-side state only: what the database sees is set per
transaction by :func:`~pgtenancy.session.tenant_session` and
:func:`~pgtenancy.connection.tenant_connection`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

from pgtenancy import signals
from pgtenancy.errors import NoTenantContext
from pgtenancy.slugs import validate_slug

_stack: ContextVar[tuple[str, ...]] = ContextVar("pgtenancy_tenant_stack", default=())
# Sending a signal nobody listens to still walks the registry under a lock:
# the hot path (every tenant transaction) looks at the receiver list first.
_ACTIVATED = signals.tenant_activated
_DEACTIVATED = signals.tenant_deactivated


def current_tenant() -> str | None:
    """Slug of the innermost active tenant context, or None outside any."""
    stack = _stack.get()
    return stack[-1] if stack else None


def tenant_stack() -> tuple[str, ...]:
    """Every active tenant context, outermost first."""
    return _stack.get()


def resolve_tenant(slug: str | None) -> str:
    """The slug to use: ``slug`` itself, or the current context's tenant.

    Raises:
        pgtenancy.errors.NoTenantContext: ``slug`` is None and no tenant is active.
        pgtenancy.errors.InvalidTenantSlug: the slug is invalid.
    """
    if slug is None:
        slug = current_tenant()
        if slug is None:
            raise NoTenantContext(
                "no tenant given and no tenant context active: pass a slug or use use_tenant()"
            )
    return validate_slug(slug)


class use_tenant:
    """Context manager that makes ``slug`` the current tenant for the block.

    Works with ``with`` (receivers run through ``send``) and ``async with``
    (receivers run through ``asend``, so async receivers are awaited).

    The block may be left in another thread or :class:`contextvars.Context`
    than the one it was entered in (FastAPI runs a sync generator
    dependency's setup and teardown as two threadpool calls, each in a copy
    of the request's context): leaving then undoes the push where it is
    visible and raises nothing.

    Args:
        slug: tenant slug, validated as ``tenancy.validate_slug`` would.

    Raises:
        pgtenancy.errors.InvalidTenantSlug: on an invalid slug, before anything changes.
    """

    __slots__ = ("_previous", "_pushed", "_token", "slug")

    def __init__(self, slug: str) -> None:
        self.slug = validate_slug(slug)
        self._token: Token[tuple[str, ...]] | None = None
        self._previous: tuple[str, ...] = ()
        self._pushed: tuple[str, ...] = ()

    def _push(self) -> None:
        if self._token is not None:
            raise RuntimeError("use_tenant() block is not reentrant; create a new one")
        previous = _stack.get()
        pushed = (*previous, self.slug)
        self._token = _stack.set(pushed)
        self._previous = previous
        self._pushed = pushed

    def _pop(self) -> None:
        assert self._token is not None
        token, self._token = self._token, None
        try:
            _stack.reset(token)
        except ValueError:
            # Left in another Context than the one it was entered in: FastAPI
            # and Starlette run a sync generator dependency's enter and exit
            # as two threadpool calls, each in its own copy of the request's
            # context. The push then happened in a copy that is gone; undo it
            # here only if this context sees exactly what was pushed.
            if _stack.get() is self._pushed:
                _stack.set(self._previous)

    def __enter__(self) -> str:
        self._push()
        if _ACTIVATED._entries:
            try:
                _ACTIVATED.send(sender=self.slug, slug=self.slug)
            except BaseException:
                self._pop()
                raise
        return self.slug

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pop()
        if _DEACTIVATED._entries:
            _DEACTIVATED.send(sender=self.slug, slug=self.slug)

    async def __aenter__(self) -> str:
        self._push()
        if _ACTIVATED._entries:
            try:
                await _ACTIVATED.asend(sender=self.slug, slug=self.slug)
            except BaseException:
                self._pop()
                raise
        return self.slug

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pop()
        if _DEACTIVATED._entries:
            await _DEACTIVATED.asend(sender=self.slug, slug=self.slug)


class _ValidatedScope(use_tenant):
    """:class:`use_tenant` for a slug the caller has just validated."""

    __slots__ = ()

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self._token = None
        self._previous = ()
        self._pushed = ()


def enter_validated(slug: str) -> use_tenant:
    """A :class:`use_tenant` block for ``slug``, already checked by
    :func:`resolve_tenant` (sessions and connections validate once)."""
    return _ValidatedScope(slug)


class TenantContext:
    """Namespace for the tenant context API: ``TenantContext.use(slug)``,
    ``TenantContext.current()``, ``TenantContext.stack()``."""

    use = use_tenant
    current = staticmethod(current_tenant)
    stack = staticmethod(tenant_stack)
    resolve = staticmethod(resolve_tenant)
