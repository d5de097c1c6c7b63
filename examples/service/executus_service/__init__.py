"""The example service: an ASGI app that takes agent runs over HTTP and a pool of worker processes
that run them through Procrastinate, with all four batteries on PostgreSQL and Redis.

Modules: `settings` (``[tool.executus.service]``), `ledger` (the agent, its tool and the tables),
`jobs` (the Procrastinate task and how a worker starts, resumes or waits for a run), `web` (the
HTTP API and its server-sent events), `fake_model` (the loopback OpenAI-compatible model), and
``__main__`` (the processes, and ``up``, which starts them all).
"""
