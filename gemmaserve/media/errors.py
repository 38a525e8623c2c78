"""The one error type of media/: names the request field and the reason (the API answers 400)."""

from __future__ import annotations


class MediaError(ValueError):
    """A media input that cannot be used. `field` is the wire location (say
    `messages[0].content[1].image_url.url`), filled in by the caller that knows it."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)

    def at(self, field: str) -> "MediaError":
        """The same error located at `field` (kept if already located deeper)."""
        return self if self.field else MediaError(self.reason, field)
