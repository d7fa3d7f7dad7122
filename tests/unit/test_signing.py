"""Standard Webhooks signing against the specification's known-answer vector."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from bridge.deliver.signing import Signer

KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = '{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_known_answer_vector() -> None:
    assert Signer([SecretStr(KEY)]).signature(MSG_ID, TIMESTAMP, PAYLOAD) == EXPECTED


def test_headers_for_one_attempt() -> None:
    headers = Signer([SecretStr(KEY)]).headers(MSG_ID, TIMESTAMP, PAYLOAD)
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
    }


def test_receiver_library_verifies_a_fresh_signature_over_unicode_body() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    body = '{"file_name":"réunion été ✓.wav"}'
    now = int(datetime.now(UTC).timestamp())
    headers = Signer([SecretStr(secret)]).headers("evt_1", now, body)
    assert Webhook(secret).verify(body, headers) == {"file_name": "réunion été ✓.wav"}


def test_signer_repr_hides_secrets() -> None:
    """Only how many keys: neither a secret nor the key bytes it decodes to."""
    assert repr(Signer([SecretStr(KEY)])) == "Signer(<1 secrets>)"
    assert repr(Signer([SecretStr(KEY), SecretStr(KEY)])) == "Signer(<2 secrets>)"
    assert str(Signer([])) == "Signer(<0 secrets>)"
