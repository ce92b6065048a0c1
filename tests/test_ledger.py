"""The exactly-once ledger: a path with the same content is claimed once; new content is claimed again."""

import pytest

from core import ledger

pytestmark = pytest.mark.fast


def test_same_content_is_claimed_once_and_new_content_again(redis_client):
    assert ledger.claim(redis_client, [("a.png", "aa"), ("b.png", "bb")]) == [True, True]
    assert ledger.claim(redis_client, [("a.png", "aa"), ("b.png", "bb")]) == [False, False]
    assert ledger.claim(redis_client, [("a.png", "cc")]) == [True]
    assert ledger.count_queued(redis_client) == 2


def test_finish_forgets_moved_files_and_remembers_kept_ones(redis_client):
    ledger.claim(redis_client, [("moved.png", "aa"), ("kept.png", "bb")])
    ledger.finish_many(redis_client, [("moved.png", "aa", False)])
    ledger.finish_many(redis_client, [("kept.png", "bb", True)])
    assert ledger.claim(redis_client, [("moved.png", "aa")]) == [True]
    assert ledger.claim(redis_client, [("kept.png", "bb")]) == [False]
    assert ledger.entries(redis_client)["kept.png"][0] == "done"


def test_finish_of_old_content_leaves_newer_claim(redis_client):
    ledger.claim(redis_client, [("x.png", "old")])
    ledger.claim(redis_client, [("x.png", "new")])
    ledger.finish_many(redis_client, [("x.png", "old", False)])
    assert ledger.entries(redis_client)["x.png"][:2] == ("queued", "new")


def test_release_lets_the_file_be_claimed_again(redis_client):
    ledger.claim(redis_client, [("r.png", "aa")])
    ledger.release(redis_client, [("r.png", "aa")])
    assert ledger.claim(redis_client, [("r.png", "aa")]) == [True]
