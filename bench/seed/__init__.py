"""The `seed-flask` design: the 20-line Flask + requests proxy the FastAPI-vs-Flask guide measures."""
