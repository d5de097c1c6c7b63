"""The benchmarks: executus beside a bare httpx2 loop, the machine's floor and the leading frameworks.

Run everything with ``scripts/bench`` (``--quick`` for a smoke run); the figures and how to read them
are in ``docs/performance.md``. Layout:

- `bench.server`: the scripted OpenAI-compatible server, run in its own process;
- `bench.workload`: what every client asks and answers (the tool, the prompt, the model names);
- `bench.clients`: one module per client, all with the same small interface;
- `bench.client`: the measuring process (one fresh process per client and case);
- `bench.run`: the orchestrator behind ``python -m bench``;
- `bench.report`: the printed table, the markdown tables and the plot.
"""
