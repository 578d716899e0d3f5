"""Who is calling and what they may spend.

API keys, auth, request and token limits, admission, shared counters in Redis and its outage
policy, the keys CLI.
"""
