"""The one path walker: how far a chain goes, and each way a walk ends."""

from __future__ import annotations

from iotdps.pki.path import End, walk
from iotdps_testing.x509craft import make

ROOT = make("root", None, ca=True)
LINE = make("line", ROOT, ca=True)
DEV = make("dev-1", LINE)


def test_anchored_at_a_root_an_intermediate_or_the_leaf_itself() -> None:
    pool = [LINE.cert, ROOT.cert]
    assert walk([DEV.cert], pool, [ROOT.cert]).path == (DEV.cert, LINE.cert, ROOT.cert)
    # Partial chain: the first anchor ends the path, even below the root.
    partial = walk([DEV.cert], pool, [LINE.cert, ROOT.cert])
    assert partial.anchored and partial.path == (DEV.cert, LINE.cert)
    assert walk([DEV.cert], pool, [DEV.cert]).path == (DEV.cert,)


def test_a_self_signed_certificate_that_is_no_anchor_ends_the_walk() -> None:
    walked = walk([DEV.cert], [LINE.cert, ROOT.cert])
    assert walked.end is End.SELF_SIGNED and walked.top == ROOT.cert and walked.lookalike is None
    # A root re-created under the same name (another key) is named, not taken.
    recreated = make("root", None, ca=True)
    walked = walk([DEV.cert], [LINE.cert, ROOT.cert, recreated.cert], [recreated.cert])
    assert walked.end is End.SELF_SIGNED and walked.lookalike == recreated.cert


def test_same_name_other_key_is_a_wrong_key_end() -> None:
    impostor = make("line", ROOT, ca=True)
    walked = walk([DEV.cert], [impostor.cert, ROOT.cert], [ROOT.cert])
    assert walked.end is End.WRONG_KEY and walked.path == (DEV.cert,) and walked.lookalike == impostor.cert


def test_no_certificate_with_the_issuers_name() -> None:
    walked = walk([DEV.cert], [ROOT.cert], [ROOT.cert])
    assert walked.end is End.NO_ISSUER and walked.path == (DEV.cert,) and walked.lookalike is None


def test_two_cas_that_sign_each_other_loop() -> None:
    b = make("B", None, ca=True)
    a = make("A", b, ca=True)
    b_under_a = make("B", a, ca=True, key=b.key)  # B again, issued by A, with B's own key
    leaf = make("dev-2", a)
    walked = walk([leaf.cert], [a.cert, b_under_a.cert])
    assert walked.end is End.LOOP and walked.path == (leaf.cert, a.cert, b_under_a.cert)


def test_the_walk_is_bounded_and_continues_a_given_path() -> None:
    walked = walk([DEV.cert], [LINE.cert, ROOT.cert], [ROOT.cert], max_steps=1)
    assert walked.end is End.TOO_LONG and walked.path == (DEV.cert, LINE.cert)
    # Continuing a verified chain above its anchor (as attestation does to find higher groups).
    assert walk([DEV.cert, LINE.cert], [ROOT.cert]).path == (DEV.cert, LINE.cert, ROOT.cert)


def test_pool_order_is_the_preference_between_issuers() -> None:
    # The same line CA under two roots (same name and key): the first in the pool is taken.
    other_root = make("other-root", None, ca=True)
    line_again = make("line", other_root, ca=True, key=LINE.key)
    first = walk([DEV.cert], [line_again.cert, LINE.cert, ROOT.cert, other_root.cert], [ROOT.cert, other_root.cert])
    assert first.path == (DEV.cert, line_again.cert, other_root.cert)
    second = walk([DEV.cert], [LINE.cert, line_again.cert, ROOT.cert, other_root.cert], [ROOT.cert, other_root.cert])
    assert second.path == (DEV.cert, LINE.cert, ROOT.cert)
