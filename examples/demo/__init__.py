"""``make demo``: the whole path on this machine, narrated."""
