"""`send-test`: one `bridge.test` event, in the subscriber's format, signed, sent now."""

from __future__ import annotations

import secrets
import time

import aiohttp

from bridge.config import DeliveryConfig, SubscriberConfig
from bridge.deliver.guard import guarded_socket_factory
from bridge.deliver.sender import post
from bridge.deliver.signing import Signer
from bridge.deliver.templates.body import body_for, why
from bridge.models import TEST, Attempt, Event


def sample_event(now: float) -> Event:
    """A sample finished job: what a real `denoise.completed` carries, marked as a test."""
    record_id = "00000000-0000-4000-8000-000000000000"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
    data = {
        "id": record_id,
        "user_id": "test",
        "transaction_id": None,
        "audio_url": "https://cdn.munsit.com/denoised/munsit-bridge-test.wav",
        "original_audio_url": "https://cdn.munsit.com/uploads/munsit-bridge-test.wav",
        "file_name": "munsit-bridge-test.wav",
        "audio_duration": 12.5,
        "audio_size": 400_044,
        "audio_format": "wav",
        "source_type": "audio",
        "status": "success",
        "error": None,
        "created_at": stamp,
        "updated_at": stamp,
    }
    return Event(f"evt_test_{secrets.token_hex(12)}", TEST, record_id, now, "pending", data)


async def send_test(sub: SubscriberConfig, delivery: DeliveryConfig) -> Attempt:
    """Send one test event now, through the same guard and signing (every current and previous
    secret) as real deliveries; what went wrong is the attempt's error, URLs redacted."""
    now = time.time()
    event = sample_event(now)
    try:
        body = (await body_for(sub, event)).text
    except Exception as exc:
        return Attempt(now, None, 0.0, f"cannot render: {why(exc)}", "")
    signer = Signer([sub.secret, *sub.previous_secrets] if sub.secret else [])
    factory = None if delivery.allow_private_destinations else guarded_socket_factory()
    connector = aiohttp.TCPConnector(socket_factory=factory)
    async with aiohttp.ClientSession(connector=connector) as session:
        attempt, _ = await post(
            session, sub, signer, event.id, body, now=now, timeout_s=delivery.timeout_s
        )
    return attempt
