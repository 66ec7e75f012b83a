"""Talking to the Krea API (or anything that answers like it).

client.py     one aiohttp session, paced requests, every answer translated into runner.errors
remote.py     job statuses and the job JSON as the API sends it
limiter.py    the request rate shared by submits and looks, the AIMD gate, the POST window
skew.py       the server's clock from Date headers and answered submits; lost POSTs' windows
backoff.py    retry delays as pure functions, deferring to Retry-After
addresses.py  where downloads may go: no private address unless the API is at one
webhooks.py   the receiver for Krea's job-end deliveries, guarded by a per-run secret
secrets.py    the API token, from the environment or a file, never from an argument
"""
