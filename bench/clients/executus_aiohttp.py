"""executus, core alone, on the aiohttp transport: ``transport = "aiohttp"`` under the providers.

The same client as `bench.clients.executus`, with the one setting a host changes to run the
provider's httpx2 client over aiohttp (httpx-aiohttp, the ``aiohttp`` extra). Measured beside the
default transport in the same run. Without the extra installed, ``create`` raises `ImportError`
and the bench reports the client as unavailable.
"""

from __future__ import annotations

import os

from bench.clients.executus import PACKAGES as CORE_PACKAGES
from bench.clients.executus import ExecutusClient

LABEL = "executus, aiohttp transport"
PACKAGES = [*CORE_PACKAGES, "httpx-aiohttp", "aiohttp"]


async def create(base_url: str) -> ExecutusClient:
    """The executus client with ``providers.transport = "aiohttp"``."""
    try:
        import aiohttp  # noqa: F401
        import httpx_aiohttp  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the aiohttp extra is not installed (pip install 'executus-core[aiohttp]'): {exc}"
        ) from exc
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ["OPENAI_API_KEY"] = "bench"
    return ExecutusClient(settings={"providers": {"transport": "aiohttp"}})
