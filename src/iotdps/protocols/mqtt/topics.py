"""MQTT topic names and topic filters: validity rules and filter matching (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

__all__ = ["is_valid_topic_filter", "is_valid_topic_name", "topic_matches"]


def is_valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: non-empty, no wildcards, no NUL (length is the codec's business)."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def is_valid_topic_filter(topic_filter: str) -> bool:
    """A SUBSCRIBE filter: non-empty; `+` fills a whole level; `#` fills the last level only."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` (a concrete name) is matched by `topic_filter`.

    Per §4.7.2, a filter starting with a wildcard does not match topics starting with `$`,
    so a `#` subscriber never sees `$iothub/...` or `$dps/...` traffic.
    """
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            # `a/#` also matches the parent level `a` itself (§4.7.1.2).
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
