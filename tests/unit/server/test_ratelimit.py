from iotdps.server.ratelimit import TokenBucket


def test_unlimited_when_rate_is_zero() -> None:
    bucket = TokenBucket(0, 1, now=0.0)
    assert all(bucket.take(0.0) == 0 for _ in range(1000))


def test_burst_then_throttle_then_refill() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0, 0, 0]
    wait = bucket.take(100.0)
    assert wait == 1 and isinstance(wait, int)
    # Half a second at 2/s refills one token.
    assert bucket.take(100.5) == 0
    assert bucket.take(100.5) >= 1


def test_slow_rate_asks_for_longer_waits() -> None:
    bucket = TokenBucket(rate=0.1, burst=1, now=0.0)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 10
    assert bucket.take(10.0) == 0
