"""The `floor-wsgi` and `floor-flask` designs: what the product card's stack costs before any feature.

Both relay POST /v1/completions through urllib3's keep-alive pool, as Sluice does, under
`gunicorn -k gevent -w 1`, and do nothing else: no validation, keys, limits, metrics or logs.
`floor-wsgi` is a bare WSGI callable (gunicorn + gevent + urllib3 alone); `floor-flask` is the
same relay as a Flask view (what Flask and Werkzeug add). Sluice's CPU per request minus
floor-flask's is what its features cost; floor-flask's against the seed proxy's shows how
much of a ratio target the stack itself already spends.
"""
