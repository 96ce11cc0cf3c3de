"""Local fakes of third-party services that cannot run here, faked at the wire.

``slack_api``: a fake Slack Web API server, Slack's request signing, interaction payloads.
"""

from tests.fakes.slack_api import (
    DEFAULT_TOKEN,
    FakeSlack,
    SlackCall,
    blocks_text,
    interaction_body,
    interaction_payload,
    sign_request,
)

__all__ = [
    "DEFAULT_TOKEN",
    "FakeSlack",
    "SlackCall",
    "blocks_text",
    "interaction_body",
    "interaction_payload",
    "sign_request",
]
