"""Images and video in multimodal messages: source checks and the simulator's token accounting.

Accepted sources: an http(s) URL, a file:// URL, or an inline `data:<kind>/<fmt>;base64,...`
URI whose payload decodes to at most 10 MB (the size is computed from the payload length, the
payload itself is not decoded). Anything else is the service's "certain modal" error.

Token accounting (deterministic, not the real vision tokenizer):
    each image ......................... 256 tokens, 1024 with vl_high_resolution_images
    a video given as a list of frames .. 64 tokens per frame (each frame is checked as an image)
    a video given as one URL ........... 512 tokens
These are added to input_tokens and reported as usage.image_tokens / usage.video_tokens.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from .catalogue import SimError

IMAGE_TOKENS = 256
IMAGE_TOKENS_HIGH_RES = 1024
FRAME_TOKENS = 64
VIDEO_URL_TOKENS = 512
MAX_INLINE_BYTES = 10 * 1024 * 1024  # "10 MB" per base64 item, as the service counts it

BAD_MODAL = "The item of content should be a message of a certain modal"
TOO_LARGE = "The base64-encoded data of a content item exceeds the 10 MB limit (10485760 bytes after decoding)."

_URL_PREFIXES = ("http://", "https://", "file://")
_DATA_HEADER = re.compile(r"data:(image|video)/[A-Za-z0-9.+-]+;base64,")
_HW_SIDE = 28  # image_hw sides are multiples of the 28-pixel patch


@dataclass(slots=True)
class Media:
    """The media found in one request's messages.

    images: every image source in order (video frames are not included).
    video_tokens: the summed video token charge (frames and whole-video URLs).
    """

    images: list[str] = field(default_factory=list)
    video_tokens: int = 0


def _invalid(message: str) -> SimError:
    return SimError(400, "InvalidParameter", message)


def inline_size(value: str, start: int) -> int:
    """Decoded byte size of the base64 payload `value[start:]` (padding subtracted)."""
    length = len(value) - start
    padding = value.count("=", max(start, len(value) - 2))
    return length * 3 // 4 - padding


def check_source(value: Any, kind: str) -> None:
    """Raise 400 InvalidParameter unless `value` is a usable source of `kind` ("image"/"video")."""
    if not isinstance(value, str):
        raise _invalid(BAD_MODAL)
    if value.startswith(_URL_PREFIXES):
        if value.partition("://")[2]:
            return
        raise _invalid(BAD_MODAL)
    match = _DATA_HEADER.match(value)
    if match is None or match.group(1) != kind or match.end() == len(value):
        raise _invalid(BAD_MODAL)
    if inline_size(value, match.end()) > MAX_INLINE_BYTES:
        raise _invalid(TOO_LARGE)


def add_part(part: dict[str, Any], media: Media) -> None:
    """Check the image / video of one multimodal content item and tally it into `media`."""
    if "image" in part:
        image = part["image"]
        check_source(image, "image")
        media.images.append(image)
    if "video" in part:
        video = part["video"]
        if isinstance(video, list):
            if not video:
                raise _invalid(BAD_MODAL)
            for frame in video:
                check_source(frame, "image")
            media.video_tokens += FRAME_TOKENS * len(video)
        else:
            check_source(video, "video")
            media.video_tokens += VIDEO_URL_TOKENS


def image_tokens(media: Media, high_resolution: bool) -> int:
    """The token charge of every image in `media`."""
    return len(media.images) * (IMAGE_TOKENS_HIGH_RES if high_resolution else IMAGE_TOKENS)


def image_hw(media: Media) -> list[list[int]]:
    """A deterministic [height, width] per image (multiples of 28, 280 to 1372 pixels), derived
    from the image source (its first 4 KiB and its length) so equal sources get equal sizes."""
    sizes: list[list[int]] = []
    for image in media.images:
        digest = hashlib.sha256(b"%d|" % len(image) + image[:4096].encode("utf-8", "replace")).digest()
        sizes.append([_HW_SIDE * (10 + digest[0] % 40), _HW_SIDE * (10 + digest[1] % 40)])
    return sizes
