"""The example payloads shown in the README, rendered by the real formats.

`python -m bridge.examples --write README.md` refreshes them; a test fails when they drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bridge.deliver.formats import FORMATS, body
from bridge.models import COMPLETED, Event, event_id

RECORD_ID = "6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f"
RECORD: dict[str, object] = {
    "id": RECORD_ID,
    "user_id": "usr_42",
    "transaction_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "audio_url": "https://cdn.munsit.com/denoised/6f1c2d3e.wav",
    "original_audio_url": "https://cdn.munsit.com/uploads/6f1c2d3e.wav",
    "file_name": "standup-meeting.wav",
    "audio_duration": 93.4,
    "audio_size": 2990044,
    "audio_format": "wav",
    "source_type": "audio",
    "status": "success",
    "error": None,
    "created_at": "2026-11-23T18:58:41.220Z",
    "updated_at": "2026-11-23T19:00:00.123Z",
}
EXAMPLE = Event(
    id=event_id(RECORD_ID, COMPLETED),
    type=COMPLETED,
    record_id=RECORD_ID,
    occurred_at=1795460400.456,
    previous_status="pending",
    data=RECORD,
)
_BLOCK = re.compile(r"(<!-- example:(\w+) -->\n```json\n)(.*?)(^```$)", re.S | re.M)


def rendered(fmt: str) -> str:
    return json.dumps(body(EXAMPLE, fmt), indent=2, ensure_ascii=False)


def refresh(text: str) -> str:
    """`text` with every `<!-- example:FORMAT -->` JSON block re-rendered."""
    return _BLOCK.sub(lambda m: m.group(1) + rendered(m.group(2)) + "\n" + m.group(4), text)


def blocks(text: str) -> dict[str, str]:
    """The example blocks found in `text`, by format."""
    return {m.group(2): m.group(3).removesuffix("\n") for m in _BLOCK.finditer(text)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(refresh(path.read_text()))
        return 0
    for fmt in FORMATS:
        print(f"--- {fmt}\n{rendered(fmt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
