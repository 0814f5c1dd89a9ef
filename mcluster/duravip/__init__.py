"""DuraVIP: addresses owned by exactly one live node at a time (Momentum's DuraVIP)."""
