"""The capability DAG: classify requests planned, coalesced and run inline or on runners."""
