"""Loading the plugin (what every `executus` command and `Executor()` do) imports the mcp SDK only on first use.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies. Each check
runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

import pytest

from executus_core.testing.imports import imported_after


@pytest.mark.parametrize(
    "code",
    [
        "import executus_mcp.plugin",
        "from executus_core import Executor; Executor(entry_points=False, plugins=[__import__('executus_mcp.plugin').plugin])",
    ],
)
def test_loading_and_registering_imports_no_mcp_sdk(code: str, tmp_path) -> None:
    assert imported_after(code, ["mcp", "mcp_types"], tmp_path) == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_mcp as m; assert all(getattr(m, n) is not None for n in m.__all__)"
    assert imported_after(code, ["mcp"], tmp_path) == []
