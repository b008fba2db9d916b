"""Liveness and the schema revision served."""

from __future__ import annotations

from fastapi import APIRouter, Request

from siloguard.api.schemas import Health

router = APIRouter()


@router.get("/v1/health", response_model=Health, tags=["service"])
def health(request: Request) -> Health:
    """Liveness and the schema revision served (no authentication)."""
    return Health(status="ok", schema_revision=request.app.state.revision)
