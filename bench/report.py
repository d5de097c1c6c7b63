"""Turn a results JSON into the printed table, the markdown of docs/performance.md and the plot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.clients import CLIENTS

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
_LABELS = {
    "floor": "floor (asyncio streams + orjson)",
    "bare_httpx2": "bare httpx2 loop",
    "executus": "executus",
    "openai_agents": "OpenAI Agents SDK",
    "pydantic_ai": "pydantic-ai",
}


def _label(name: str, entry: dict[str, Any]) -> str:
    return str(entry.get("label") or _LABELS.get(name, name))


def _ordered(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    clients = results.get("clients", {})
    return [(n, clients[n]) for n in CLIENTS if n in clients]


def _why_missing(entry: dict[str, Any]) -> str:
    if "unavailable" in entry:
        return f"not installed ({entry['unavailable']})"
    return f"failed: {entry.get('error')}"


def _ratio(value: float, base: float | None) -> str:
    return f" ({value / base:.2f}x)" if base else ""


def sequential_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: CPU and wall time per step for each run length."""
    ns = [str(n) for n in results["plan"]["ns"]]
    header = ["client"]
    for n in ns:
        header += [f"N={n} CPU us/step (x bare)", f"N={n} wall us/step"]
    bare = results.get("clients", {}).get("bare_httpx2", {}).get("sequential", {})
    rows = []
    for name, entry in _ordered(results):
        if "sequential" not in entry:
            rows.append([_label(name, entry), _why_missing(entry)] + [""] * (len(header) - 2))
            continue
        row = [_label(name, entry)]
        for n in ns:
            case = entry["sequential"].get(n)
            if case is None:
                row += ["-", "-"]
                continue
            base = bare.get(n, {}).get("cpu_us_per_step")
            row += [
                f"{case['cpu_us_per_step']:,.0f}{_ratio(case['cpu_us_per_step'], base)}",
                f"{case['wall_us_per_step']:,.0f}",
            ]
        rows.append(row)
    return header, rows


def concurrent_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: throughput, CPU per step and memory for each concurrency."""
    header = [
        "client",
        "runs at once",
        "steps/s",
        "CPU us/step (x bare)",
        "peak RSS MiB",
        "memory/run KiB",
        "errors",
    ]
    clients = results.get("clients", {})
    rows = []
    for concurrency in map(str, results["plan"]["concurrency"]):
        base = (
            clients.get("bare_httpx2", {}).get("concurrent", {}).get(concurrency, {}).get("cpu_us_per_step")
        )
        for name, entry in _ordered(results):
            if "sequential" not in entry:
                continue
            case = entry.get("concurrent", {}).get(concurrency)
            if case is None:
                continue
            if "cpu_us_per_step" not in case:
                rows.append(
                    [_label(name, entry), concurrency, f"failed: {case.get('error')}", "", "", "", ""]
                )
                continue
            rows.append(
                [
                    _label(name, entry),
                    concurrency,
                    f"{case['steps_per_second']:,.0f}",
                    f"{case['cpu_us_per_step']:,.0f}{_ratio(case['cpu_us_per_step'], base)}",
                    f"{case['peak_rss_bytes'] / 2**20:,.0f}",
                    f"{case['memory_per_run_bytes'] / 1024:,.0f}",
                    str(case["errors"]),
                ]
            )
    return header, rows


def import_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: import times, and the time to build an Executor."""
    imports = results.get("imports", {})
    rows = []
    for label, entry in imports.items():
        if label == "executor":
            continue
        shown = f"`import {entry.get('module', label)}`"
        if "import_seconds" in entry:
            rows.append([shown, f"{entry['import_seconds'] * 1000:,.0f} ms"])
        else:
            rows.append([shown, f"not measured: {entry.get('unavailable')}"])
    executor = imports.get("executor", {})
    if "build_seconds" in executor:
        plugins = ", ".join(executor["plugins"]) or "none"
        rows.append(
            [
                "`Executor()`, first in a process (entry points scanned)",
                f"{executor['first_build_seconds'] * 1000:,.1f} ms",
            ]
        )
        rows.append(["`Executor()`, later ones", f"{executor['build_seconds'] * 1e6:,.0f} us"])
        rows.append(["plugins loaded", plugins])
    elif executor:
        rows.append(["`Executor()`", f"failed: {executor.get('error')}"])
    return ["what", "time"], rows


def target_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each target of issue 12, met or not, with its figures."""
    mark = {True: "met", False: "MISSED", None: "not measured"}
    return ["target", "result", "figures"], [
        [t["target"], mark[t["met"]], t["detail"]] for t in results.get("targets", [])
    ]


def profile_rows(results: dict[str, Any], client: str = "executus", top: int = 12) -> list[str]:
    """Markdown lines summarizing the cProfile of ``client``."""
    prof = results.get("profile", {}).get(client)
    if not prof or "by_package" not in prof:
        return [f"(no profile of {client}: {prof.get('error') if prof else 'not run'})"]
    lines = [
        f"cProfile of {client}, {prof['runs']} runs of N = {prof['n']} ({prof['model_calls']} model calls); "
        f"{prof['profiled_us_per_step']:,.0f} us per step under the profiler (it inflates every call, so "
        "read the shares, not the absolute times).",
        "",
        "| where (own time) | share | us/step (profiled) |",
        "|---|---:|---:|",
    ]
    for group, figures in prof["by_package"].items():
        lines.append(f"| {group} | {figures['share'] * 100:.1f}% | {figures['us_per_step']:,.0f} |")
    lines += [
        "",
        "| function (file:line:name) | calls/step | own us/step | share |",
        "|---|---:|---:|---:|",
    ]
    for item in prof["top_own_time"][:top]:
        lines.append(
            f"| `{item['function']}` | {item['calls_per_step']:.1f} | {item['own_us_per_step']:,.1f} "
            f"| {item['share'] * 100:.1f}% |"
        )
    return lines


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    memory = m.get("memory_bytes")
    mem = f", {memory / 2**30:.0f} GiB" if memory else ""
    pin = results.get("pinning", {})
    pinned = (
        f"; client pinned to CPU {pin['client_cpu']}, server to CPU {pin['server_cpu']}"
        if pin.get("client_cpu") is not None
        else ""
    )
    return (
        f"{m.get('cpu')} x{m.get('cpus')}{mem}, {m.get('platform')}, "
        f"{m.get('python_implementation')} {m.get('python')}{pinned}"
    )


def _versions(results: dict[str, Any]) -> str:
    found: dict[str, str] = {}
    for _, entry in _ordered(results):
        for name, version in (entry.get("versions") or {}).items():
            if version:
                found[name] = version
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items()))


def text(results: dict[str, Any]) -> str:
    """The report printed at the end of a run."""
    plan = results["plan"]
    parts = [
        f"executus benchmarks ({plan['name']} run, {results.get('seconds', 0):.0f} s) on {_machine_line(results)}",
        f"packages: {_versions(results)}",
        "",
        "Sequential runs: client CPU and wall time per step (medians)",
        _text_table(*sequential_rows(results)),
        "",
        f"Concurrent runs of {plan['concurrent_n']} steps in one process (medians of {plan['concurrent_repeats']})",
        _text_table(*concurrent_rows(results)),
        "",
        "Import and build times",
        _text_table(*import_rows(results)),
        "",
        "Targets" + (" -- quick run: these are not the figures" if plan["name"] == "quick" else ""),
        _text_table(*target_rows(results)),
    ]
    executus = results.get("clients", {}).get("executus", {})
    if executus.get("provider"):
        parts += ["", f"executus model: {executus['provider']}"]
    return "\n".join(parts)


def markdown(results: dict[str, Any]) -> str:
    """The generated part of docs/performance.md."""
    plan = results["plan"]
    executus = results.get("clients", {}).get("executus", {})
    lines = [
        f"Measured {results.get('started_at', '?')} on {_machine_line(results)}. "
        f"Packages: {_versions(results)}. executus ran with `{executus.get('provider', '?')}`. "
        f"The whole run took {results.get('seconds', 0):.0f} s.",
        "",
        "**Sequential runs** (client CPU time and wall time per model call; medians over "
        + ", ".join(f"{r} runs of N = {n}" for n, r in zip(plan["ns"], plan["runs"], strict=False))
        + "; the ratio is to the bare httpx2 loop):",
        "",
        _md_table(*sequential_rows(results)),
        "",
        f"**Concurrent runs** of {plan['concurrent_n']} steps in one process (medians of "
        f"{plan['concurrent_repeats']} fresh processes each; memory per run = (peak RSS - RSS before the "
        "batch) / runs):",
        "",
        _md_table(*concurrent_rows(results)),
        "",
        "**Import and build times** (fresh interpreter each time, medians):",
        "",
        _md_table(*import_rows(results)),
        "",
        "**Targets**:",
        "",
        _md_table(*target_rows(results)),
        "",
        "**Where the time goes** in executus:",
        "",
        *profile_rows(results, "executus"),
        "",
        "And in the bare httpx2 loop, for comparison:",
        "",
        *profile_rows(results, "bare_httpx2", top=8),
    ]
    return "\n".join(lines)


def update_docs(results: dict[str, Any], page: Path) -> None:
    """Replace the generated block of ``page`` (between the bench markers) with this run's tables."""
    content = page.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{page} has no {START} ... {END} block to fill")
    block = f"{START}\n{markdown(results)}\n{END}"
    page.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, content, flags=re.S))
    from bench import heavy

    heavy.update_docs(results, page)


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Draw client CPU per step against run length, one line per client; the reason if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (it is in the bench dependency group)"
    plt.rcParams["svg.hashsalt"] = "executus-bench"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller, diffable file
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    drawn = 0
    for name, entry in _ordered(results):
        cases = entry.get("sequential")
        if not cases:
            continue
        ns = sorted(int(n) for n in cases)
        ax.plot(
            ns,
            [cases[str(n)]["cpu_us_per_step"] for n in ns],
            marker="o",
            linewidth=2.5 if name == "executus" else 1.5,
            label=_label(name, entry),
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no client was measured"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = results["plan"]["ns"]
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("run length N (steps, sequential)")
    ax.set_ylabel("client CPU per step (us, log scale)")
    ax.set_title("Client CPU per model call against run length")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lstrip(".") or "svg", metadata={"Date": None})
    plt.close(fig)
    return None
