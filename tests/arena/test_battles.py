"""Battles and their one vote, against the real database: the vote rules (early, second, identity leak,
daily cap, anonymous visitor), blindness until the vote, named battles, the cached leaderboard, the
preference export and the outlier flag."""

import json
import random
import re
from collections import Counter

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.urls import reverse

from apps.arena.leaderboard import leaderboard_compute, leaderboard_refresh, voters_flag_outliers
from apps.arena.models import Battle, BattleAnswer, Exclusion, LeaderboardSnapshot, Mode, Outcome, VoterFlag
from apps.arena.selectors import preference_pairs_export
from apps.arena.services import ArenaError, battle_start, battle_turn_add, battle_vote
from apps.assistants.models import Visibility
from tests.factories import make_assistant, make_user, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def pair(models_ready):
    """Two public assistants, owned by someone else than the voter."""
    builder = make_user("builder")
    return (
        make_assistant(builder, name="Quillfeather", visibility=Visibility.PUBLIC),
        make_assistant(builder, name="Marblebrook", visibility=Visibility.PUBLIC),
    )


def _battle(user, *, mode=Mode.PUBLIC, seed=0, **kwargs) -> Battle:
    return battle_start(user=user, mode=mode, prompt="Name a colour.", rng=random.Random(seed), **kwargs)


def _answer(battle: Battle, text_a: str = "Blue.", text_b: str = "Green.", status: str = "done") -> None:
    for side, text in (("a", text_a), ("b", text_b)):
        BattleAnswer.objects.filter(turn__battle=battle, side=side, status__in=["pending", "streaming"]).update(
            status=status, content=text
        )


def test_a_sampled_battle_is_two_different_versions_with_its_probability_and_both_answers_queued(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    assert battle.version_a_id != battle.version_b_id
    assert {battle.version_a_id, battle.version_b_id} == {a.current_version_id for a in pair}
    assert not battle.named and battle.sampling_probability == pytest.approx(1.0)  # the only pair
    answers = BattleAnswer.objects.filter(turn__battle=battle)
    assert sorted(answers.values_list("side", "status")) == [("a", "pending"), ("b", "pending")]


def test_a_vote_before_both_answers_finish_is_refused(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    with pytest.raises(ArenaError, match="finish"):
        battle_vote(battle=battle, user=voter, outcome=Outcome.A)
    BattleAnswer.objects.filter(turn__battle=battle, side="a").update(status="done", content="Blue.")
    with pytest.raises(ArenaError, match="finish"):
        battle_vote(battle=battle, user=voter, outcome=Outcome.A)
    battle.refresh_from_db()
    assert battle.vote == "" and battle.voted_at is None


def test_a_second_vote_is_refused_and_the_first_stays(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    _answer(battle)
    battle_vote(battle=battle, user=voter, outcome=Outcome.B)
    with pytest.raises(ArenaError, match="already"):
        battle_vote(battle=battle, user=voter, outcome=Outcome.A)
    battle.refresh_from_db()
    assert battle.vote == Outcome.B and battle.excluded_reason == ""


def test_only_the_battles_own_user_may_vote_or_open_it(pair):
    voter, other = make_user("vera"), make_user("otto")
    battle = _battle(voter)
    _answer(battle)
    with pytest.raises(ArenaError):
        battle_vote(battle=battle, user=other, outcome=Outcome.A)
    assert signed_in(other).get(reverse("arena:battle", args=[battle.pk])).status_code == 404
    answer = BattleAnswer.objects.filter(turn__battle=battle).first()
    assert signed_in(other).get(reverse("arena:events", args=[answer.pk])).status_code == 404


def test_an_anonymous_visitor_cannot_start_or_vote(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    _answer(battle)
    anonymous = Client()
    response = anonymous.post(reverse("arena:vote", args=[battle.pk]), {"outcome": Outcome.A})
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    response = anonymous.post(reverse("arena:create"), {"mode": Mode.PUBLIC, "prompt": "Hi"})
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    with pytest.raises(ArenaError, match="Sign in"):
        battle_vote(battle=battle, user=AnonymousUser(), outcome=Outcome.A)
    with pytest.raises(ArenaError, match="Sign in"):
        battle_start(user=AnonymousUser(), mode=Mode.PUBLIC, prompt="Hi")
    battle.refresh_from_db()
    assert battle.vote == "" and Battle.objects.count() == 1


def test_names_are_hidden_until_the_vote_then_revealed(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    _answer(battle)
    client = signed_in(voter)
    url = reverse("arena:battle", args=[battle.pk])
    before = client.get(url).content.decode()
    assert "Assistant A" in before and "Assistant B" in before
    assert "Quillfeather" not in before and "Marblebrook" not in before
    response = client.post(reverse("arena:vote", args=[battle.pk]), {"outcome": Outcome.TIE})
    assert response.status_code == 302
    after = client.get(url).content.decode()
    battle.refresh_from_db()
    assert battle.vote == Outcome.TIE
    assert f"Assistant A: {battle.version_a}" in after and f"Assistant B: {battle.version_b}" in after


def test_an_answer_that_names_an_assistant_is_stored_but_excluded(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    _answer(battle, text_a="As quillFeather, I say blue.")
    battle = battle_vote(battle=battle, user=voter, outcome=Outcome.A)
    assert battle.vote == Outcome.A and battle.excluded_reason == Exclusion.IDENTITY_LEAK
    assert "quillfeather" in battle.excluded_detail.lower()
    assert leaderboard_compute(mode=Mode.PUBLIC)["votes"] == 0
    # A name inside another word is no leak.
    clean = _battle(voter, seed=1)
    _answer(clean, text_a="Quillfeathers are soft.")
    assert battle_vote(battle=clean, user=voter, outcome=Outcome.A).excluded_reason == ""


def test_votes_over_the_daily_cap_are_stored_and_excluded(pair, settings):
    settings.ARENA_VOTES_PER_DAY = 2
    voter = make_user("vera")
    reasons = []
    for seed in range(3):
        battle = _battle(voter, seed=seed)
        _answer(battle)
        reasons.append(battle_vote(battle=battle, user=voter, outcome=Outcome.A).excluded_reason)
    assert reasons == ["", "", Exclusion.DAILY_CAP]
    assert Battle.objects.filter(user=voter).exclude(vote="").count() == 3
    assert leaderboard_compute(mode=Mode.PUBLIC)["votes"] == 2
    # Another user has their own cap.
    other = make_user("otto")
    battle = _battle(other)
    _answer(battle)
    assert battle_vote(battle=battle, user=other, outcome=Outcome.A).excluded_reason == ""


def test_named_battles_are_stored_never_rated_and_only_with_usable_versions(pair, models_ready):
    owner = make_user("ada")
    mine = make_assistant(owner, name="Draft")
    battle = battle_start(
        user=owner,
        mode=Mode.PERSONAL,
        prompt="Hi",
        version_a=mine.current_version,
        version_b=pair[0].current_version,
    )
    assert battle.named and battle.sampling_probability is None
    _answer(battle)
    assert battle_vote(battle=battle, user=owner, outcome=Outcome.A).excluded_reason == Exclusion.NAMED
    assert leaderboard_compute(mode=Mode.PERSONAL, owner=owner)["votes"] == 0
    stranger = make_user("otto")
    with pytest.raises(ArenaError, match="may use"):
        battle_start(user=stranger, mode=Mode.PERSONAL, prompt="Hi", version_a=mine.current_version,
                     version_b=pair[0].current_version)  # fmt: skip
    with pytest.raises(ArenaError, match="may use"):  # a private version is not in the public arena
        battle_start(user=owner, mode=Mode.PUBLIC, prompt="Hi", version_a=mine.current_version,
                     version_b=pair[0].current_version)  # fmt: skip


def test_my_arena_offers_every_version_of_my_assistants(models_ready):
    from apps.assistants.services import AssistantConfig, assistant_update

    owner = make_user("ada")
    assistant = make_assistant(owner, name="Draft")
    first = assistant.current_version
    config = AssistantConfig(name="Draft", base_model=first.base_model, instructions="Be terse.", temperature=0.0)
    assistant_update(assistant=assistant, actor=owner, config=config, visibility=Visibility.PRIVATE)
    assistant.refresh_from_db()
    battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi", rng=random.Random(0))
    assert {battle.version_a_id, battle.version_b_id} == {first.pk, assistant.current_version_id}
    with pytest.raises(ArenaError, match="two different"):  # the public arena has no public assistant
        battle_start(user=owner, mode=Mode.PUBLIC, prompt="Hi")


def test_a_follow_up_goes_to_both_sides_once_both_answered_and_not_after_the_vote(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    with pytest.raises(ArenaError, match="finish"):
        battle_turn_add(battle=battle, prompt="And why?")
    _answer(battle)
    turn = battle_turn_add(battle=battle, prompt="And why?")
    assert turn.number == 2 and sorted(turn.answers.values_list("side", flat=True)) == ["a", "b"]
    _answer(battle, "Because.", "Because.")
    battle_vote(battle=battle, user=voter, outcome=Outcome.BOTH_BAD)
    with pytest.raises(ArenaError, match="decided"):
        battle_turn_add(battle=battle, prompt="More?")


def _voted(user, outcome, *, seed, text_a="Blue.", text_b="Green.") -> Battle:
    battle = _battle(user, seed=seed)
    _answer(battle, text_a, text_b)
    return battle_vote(battle=battle, user=user, outcome=outcome)


def test_the_leaderboard_is_computed_by_the_refresh_and_pages_only_read_it(pair, settings):
    settings.ARENA_MIN_VOTES = 3
    settings.ARENA_BOOTSTRAP_ROUNDS = 50
    voter = make_user("vera")
    for seed in range(6):
        _voted(voter, Outcome.A, seed=seed)  # "A" whoever A is: with a fair coin each version wins some
    client = Client()
    assert "No rated votes yet" in client.get(reverse("arena:leaderboard")).content.decode()
    snapshot = leaderboard_refresh(mode=Mode.PUBLIC)
    board = snapshot.payload
    assert board["votes"] == 6 and len(board["rows"]) == 2
    wins = Counter(Battle.objects.values_list("version_a_id", flat=True))  # every vote was "A"
    for row in board["rows"]:
        assert row["low"] <= row["rating"] <= row["high"] and row["votes"] == 6
        assert (row["wins"], row["losses"], row["ties"]) == (wins[row["version_id"]], 6 - wins[row["version_id"]], 0)
    assert board["rows"][0]["rank"] == 1 and board["rows"][0]["rating"] >= board["rows"][1]["rating"]
    cells = board["matrix"]["rows"][0]["cells"]
    assert cells[0] is None and cells[1]["votes"] == 6
    assert cells[1]["rate"] == pytest.approx((board["rows"][0]["wins"]) / 6, abs=1e-3)
    page = client.get(reverse("arena:leaderboard")).content.decode()  # anyone may read the public board
    chart = json.loads(re.search(r'<script id="arena-chart-data" type="application/json">(.*?)</script>', page)[1])
    assert chart["intervals"] == [[row["low"], row["high"]] for row in board["rows"]]
    # A page load never refits: the snapshot row is untouched by reading it, and a vote alone does not
    # change it either (the refresh task does).
    _voted(voter, Outcome.B, seed=9)
    client.get(reverse("arena:leaderboard"))
    assert LeaderboardSnapshot.objects.get(pk=snapshot.pk).computed_at == snapshot.computed_at
    assert leaderboard_refresh(mode=Mode.PUBLIC).payload["votes"] == 7


def test_my_leaderboard_counts_only_my_own_arena(pair, settings):
    settings.ARENA_BOOTSTRAP_ROUNDS = 20
    owner = make_user("ada")
    for seed in range(2):
        battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi", rng=random.Random(seed))
        _answer(battle)
        battle_vote(battle=battle, user=owner, outcome=Outcome.A)
    _voted(make_user("vera"), Outcome.A, seed=0)
    assert leaderboard_refresh(mode=Mode.PERSONAL, owner=owner).payload["votes"] == 2
    page = signed_in(owner).get(reverse("arena:leaderboard_mine")).content.decode()
    assert "2 rated votes" in page


def test_the_preference_export_gives_a_pair_per_win_and_nothing_for_ties_both_bad_or_exclusions(pair):
    voter = make_user("vera")
    win = _voted(voter, Outcome.B, seed=0, text_a="Loser says red.", text_b="Winner says blue.")
    _voted(voter, Outcome.TIE, seed=1)
    _voted(voter, Outcome.BOTH_BAD, seed=2)
    _voted(voter, Outcome.A, seed=3, text_a="I am Marblebrook.")  # identity leak: excluded
    rows = preference_pairs_export(mode=Mode.PUBLIC)
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Name a colour."}],
            "chosen": [{"role": "assistant", "content": "Winner says blue."}],
            "rejected": [{"role": "assistant", "content": "Loser says red."}],
        }
    ]
    assert win.vote == Outcome.B
    # The user's own export is JSON Lines of the same rows; the public one is for admins only.
    response = signed_in(voter).get(reverse("arena:export", args=["public"]))
    assert response.status_code == 403


def test_a_multi_turn_win_exports_each_sides_whole_continuation(pair):
    voter = make_user("vera")
    battle = _battle(voter)
    _answer(battle, "A1", "B1")
    battle_turn_add(battle=battle, prompt="Second?")
    _answer(battle, "A2", "B2")
    battle_vote(battle=battle, user=voter, outcome=Outcome.A)
    (row,) = preference_pairs_export(mode=Mode.PUBLIC)

    def said(text):
        return {"role": "assistant", "content": text}

    user_turn = {"role": "user", "content": "Second?"}
    assert row["chosen"] == [said("A1"), user_turn, said("A2")]
    assert row["rejected"] == [said("B1"), user_turn, said("B2")]


def test_a_voter_who_contradicts_the_crowd_is_flagged_and_ties_are_skipped(pair, settings):
    settings.ARENA_OUTLIER_MIN_VOTES = 10
    quill = pair[0].current_version.pk

    def vote_for(user, winner_pk, count, seed0):
        for seed in range(seed0, seed0 + count):
            battle = _battle(user, seed=seed)
            _answer(battle)
            battle_vote(battle=battle, user=user, outcome=Outcome.A if battle.version_a_id == winner_pk else Outcome.B)

    crowd = [make_user(f"crowd{i}") for i in range(4)]
    for i, user in enumerate(crowd):
        vote_for(user, quill, 12, seed0=100 * i)
    marble = pair[1].current_version.pk
    contrarian, tier = make_user("contrarian"), make_user("tier")
    vote_for(contrarian, marble, 12, seed0=1000)
    for seed in range(2000, 2012):  # only ties: nothing to compare
        battle = _battle(tier, seed=seed)
        _answer(battle)
        battle_vote(battle=battle, user=tier, outcome=Outcome.TIE)
    flags = voters_flag_outliers()
    assert [flag.user for flag in flags] == [contrarian]
    flag = VoterFlag.objects.get(user=contrarian)
    assert flag.votes_compared == 12 and flag.agreements == 0 and flag.p_value < 1e-3


def test_the_index_starts_a_sampled_or_a_named_battle_through_the_form(pair):
    voter = make_user("vera")
    client = signed_in(voter)
    page = client.get(reverse("arena:index")).content.decode()
    assert 'name="mode" value="public"' in page and 'name="mode" value="personal"' in page
    response = client.post(reverse("arena:create"), {"mode": Mode.PUBLIC, "prompt": "Name a colour."})
    battle = Battle.objects.get(user=voter)
    assert response.status_code == 302 and response.url == reverse("arena:battle", args=[battle.pk])
    assert not battle.named
    a, b = (assistant.current_version_id for assistant in pair)
    client.post(reverse("arena:create"), {"mode": Mode.PUBLIC, "prompt": "Hi", "version_a": b, "version_b": a})
    named = Battle.objects.get(user=voter, named=True)
    assert (named.version_a_id, named.version_b_id) == (b, a)
    response = client.post(
        reverse("arena:create"), {"mode": Mode.PUBLIC, "prompt": "Hi", "version_a": a, "version_b": a}
    )
    assert Battle.objects.filter(user=voter).count() == 2  # a self-pair is refused


def test_votes_queue_one_refresh_until_it_starts(pair):
    from apps.arena.leaderboard import leaderboard_refresh_claim

    assert leaderboard_refresh_claim(mode=Mode.PUBLIC, owner_id=None)
    assert not leaderboard_refresh_claim(mode=Mode.PUBLIC, owner_id=None)  # already waiting: nothing queued
    assert leaderboard_refresh_claim(mode=Mode.PERSONAL, owner_id=7)  # another board has its own
    leaderboard_refresh(mode=Mode.PUBLIC)
    assert leaderboard_refresh_claim(mode=Mode.PUBLIC, owner_id=None)  # the refresh started: the next vote queues


def test_an_assistant_made_private_leaves_the_public_board_at_the_next_refresh(pair, settings):
    from apps.assistants.services import assistant_visibility_set

    settings.ARENA_BOOTSTRAP_ROUNDS = 20
    _voted(make_user("vera"), Outcome.A, seed=0)
    assert len(leaderboard_refresh(mode=Mode.PUBLIC).payload["rows"]) == 2
    assistant_visibility_set(assistant=pair[1], visibility=Visibility.PRIVATE)
    rows = leaderboard_refresh(mode=Mode.PUBLIC).payload["rows"]
    assert [row["assistant"] for row in rows] == [pair[0].slug]


def test_an_answer_whose_worker_vanished_is_failed_and_the_battle_can_be_voted_but_is_not_rated(pair, settings):
    from apps.arena.generation import battle_answers_fail_abandoned

    settings.CHAT_ANSWER_ABANDONED_AFTER_SECONDS = 0
    voter = make_user("vera")
    battle = _battle(voter)
    BattleAnswer.objects.filter(turn__battle=battle, side="a").update(status="done", content="Blue.")
    BattleAnswer.objects.filter(turn__battle=battle, side="b").update(status="streaming", content="Gre")
    assert battle_answers_fail_abandoned() == 1
    failed = BattleAnswer.objects.get(turn__battle=battle, side="b")
    assert failed.status == "error" and failed.content == "Gre"
    assert battle_vote(battle=battle, user=voter, outcome=Outcome.A).excluded_reason == Exclusion.ANSWER_FAILED


def test_my_arena_exports_as_json_lines_to_its_owner(pair):
    owner = make_user("ada")
    battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi", rng=random.Random(0))
    _answer(battle, "Hello there.", "Go away.")
    battle_vote(battle=battle, user=owner, outcome=Outcome.A)
    response = signed_in(owner).get(reverse("arena:export", args=["personal"]))
    rows = [json.loads(line) for line in response.content.decode().splitlines()]
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello there."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    ]
    assert signed_in(make_user("otto")).get(reverse("arena:export", args=["personal"])).content == b""
