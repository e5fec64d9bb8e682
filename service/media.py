"""The media types the API answers with, named once."""

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"
PROMETHEUS_TEXT = "text/plain"
