"""The client side of HTTP: reading the body, noticing a client that left, relaying streams, shutdown, proxy headers."""
