"""A small multi-tenant shop on FastAPI and pgtenancy (see ../README.md)."""
