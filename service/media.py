"""The media types the API answers with, named once."""

from prometheus_client.exposition import CONTENT_TYPE_LATEST

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"
# The text exposition format, with the version prometheus_client writes (it is in the type).
PROMETHEUS_TEXT: str = CONTENT_TYPE_LATEST
