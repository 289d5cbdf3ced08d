"""Cloud SMS providers' periodic work: balances, overdue status queries, reply pulls."""
