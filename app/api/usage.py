"""GET /v1/usage: the ledger summarised, with the filters of `sluice usage`.

A key sees its own usage; a key created with `--admin` sees everyone's (and may filter by
key). Without authentication (no key anywhere yet) the caller is the operator: everything.
"""
from __future__ import annotations

from typing import Any

from flask import g
from marshmallow import Schema, fields, validate

from app.api.docs import error_responses
from app.api.smorest import Blueprint
from app.errors import Forbidden, InvalidRequest
from app.ledger import get_ledger
from app.ledger.queries import GROUPINGS, QueryError, UsageQuery

blp = Blueprint("usage", __name__, url_prefix="/v1", description="Usage recorded in the ledger.")


class UsageArgsSchema(Schema):
    """Query parameters of GET /v1/usage."""

    since = fields.String(load_default="7d", metadata={
        "description": "Start: a duration ago (7d, 12h, 30m) or an ISO date or date-time (UTC). Default 7d."})
    until = fields.String(metadata={"description": "End (exclusive), same forms as since. Default: now."})
    by = fields.String(load_default="key", validate=validate.OneOf(GROUPINGS),
                       metadata={"description": "Grouping: key, model, day (UTC) or route."})
    key = fields.String(validate=validate.Length(min=1, max=64),
                        metadata={"description": "Only this key's usage (an admin key may name any key)."})


class UsageRowSchema(Schema):
    """One group of the summary; its grouping field is named as `by` (key, model, day or route)."""

    requests = fields.Integer()
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class UsageReportSchema(Schema):
    """Body of GET /v1/usage."""

    object = fields.String(metadata={"description": "`usage`."})
    by = fields.String()
    since = fields.String()
    until = fields.String()
    data = fields.List(fields.Dict(), metadata={
        "description": "One object per group: the grouping field (key, model, day or route), requests, "
                       "prompt_tokens, completion_tokens, total_tokens."})


@blp.route("/usage")
@blp.arguments(UsageArgsSchema, location="query")
@blp.response(200, UsageReportSchema)
@blp.doc(responses=error_responses(400, 403, 503))
def usage(args: dict[str, Any]) -> dict[str, Any]:
    """Requests and tokens per key, model, day or route over a time range."""
    record = g.get("key_record")
    key = args.get("key")
    if record is not None and not record.admin:
        if key not in (None, record.name):
            raise Forbidden("This key may only read its own usage; an admin key reads everyone's.", param="key")
        key = record.name
    try:
        query = UsageQuery.parse(since=args["since"], until=args.get("until"), by=args["by"], key=key)
    except QueryError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_usage_query") from None
    return {"object": "usage", "by": query.by, "since": query.since.isoformat() + "Z",
            "until": query.until.isoformat() + "Z", "data": get_ledger().usage(query)}
