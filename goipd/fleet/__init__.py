"""Fleet state: lines polled, remembered, exported; leases say who polls which server."""
