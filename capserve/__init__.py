"""capserve's Python client (`capserve.client`) and its `capserve` command (`capserve.cli`).

The client needs only httpx and pydantic; the command adds typer, tqdm and PyYAML; serving needs
the server install (Ray Serve, vLLM).
"""
