"""P:D planning: expand a base config into every P:D split of a GPU budget, sweep rates, search goodput."""
