"""Watching the live stream: drift checks over the consumed transactions, the loop that runs them,
and the retrain trigger that a drift event fires (its pipeline runner is injected)."""
