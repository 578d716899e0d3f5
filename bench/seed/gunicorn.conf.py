# The seed's server as the guide runs it (`gunicorn -k gevent -w 1`); gunicorn reads
# ./gunicorn.conf.py by default, so the seed names this file to keep Sluice's settings out.
worker_class = "gevent"
workers = 1
control_socket_disable = True  # several gunicorn masters at once (Sluice's too) must not collide
