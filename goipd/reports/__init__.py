"""What upstreams say about sends (push reports, cloud statuses, queries) applied to the ledger."""
