"""Whether an upstream stream reached its protocol's last event.

Each protocol ends a stream its own way: Chat with ``data: [DONE]`` (or, for upstreams
that omit it, the end of the body after the finish chunk), Anthropic with
``message_stop``, Responses with ``response.completed`` / ``response.incomplete`` /
``response.failed``, Gemini with the end of the body after the chunk that carries
``finishReason``. A body that ends before that was cut, however cleanly it closed.
Every stream decoder says ``ended`` (its terminal event arrived), ``finished`` (the
model's finish arrived) and ``ENDS_AT_EOF_AFTER_FINISH``; and ``last_sequence``, the
upstream's latest event number (Responses; -1 where events are not numbered), so a
gateway-made closing event can follow it.
"""

from __future__ import annotations

from protocols.seams import StreamDecoder


def reached_terminal(decoder: StreamDecoder, body_ended: bool) -> bool:
    return decoder.ended or (body_ended and decoder.finished and decoder.ENDS_AT_EOF_AFTER_FINISH)
