"""flask-smorest, adapted: the Blueprint every API module builds on parses JSON bodies without
ever failing with a 500. (The Api, with the document's additions, is in app/api/docs.py.)"""
from __future__ import annotations

import json
from typing import Any

import flask
import flask_smorest
from webargs.flaskparser import FlaskParser

from app.errors import InvalidRequest


class JSONBodyParser(FlaskParser):
    """webargs' Flask parser; JSON that is valid but beyond what json.loads accepts is the client's error."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            # Deeply nested arrays or objects ([[[[...]]]]) exhaust the interpreter's stack.
            raise InvalidRequest("JSON body is nested too deeply.", code="invalid_json") from None
        except ValueError as exc:
            if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
                raise  # webargs' own 400 "Invalid JSON body." (or an empty body)
            # Python refuses integers of more than 4300 digits (int_max_str_digits).
            raise InvalidRequest("JSON body holds a number too long to read.", code="invalid_json") from None


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with the parser above (flask-smorest's documented way to swap it)."""

    ARGUMENTS_PARSER = JSONBodyParser()
