"""GET /: the playground, one self-contained HTML page (nothing fetched from the internet)."""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def playground() -> HTMLResponse:
    html = resources.files("genforge.serve").joinpath("playground.html").read_text(encoding="utf-8")
    return HTMLResponse(html)
