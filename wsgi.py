"""The WSGI entry point gunicorn serves: `gunicorn -c gunicorn.conf.py` (see gunicorn.conf.py)."""
from app import create_app

app = create_app()
