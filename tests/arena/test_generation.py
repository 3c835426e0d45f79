"""Both sides of a battle answered by the real model through the chat builder, each with its own history."""

import random

import pytest

from apps.arena.generation import battle_answer_generate
from apps.arena.models import BattleAnswer, Mode
from apps.arena.services import battle_start, battle_turn_add
from apps.assistants.models import Visibility
from apps.chat.live import redis_client
from tests.factories import make_assistant, make_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def _generate(turn) -> dict[str, BattleAnswer]:
    for answer in turn.answers.all():
        assert battle_answer_generate(answer_id=str(answer.pk)) == BattleAnswer.Status.DONE
    return {answer.side: answer for answer in turn.answers.all()}


def test_both_sides_answer_the_same_prompts_with_their_own_history(models_ready, inference_server):
    builder = make_user("builder")
    for name, instructions in (("Terse", "Answer in one short sentence."), ("Poet", "Answer as a short rhyme.")):
        make_assistant(builder, name=name, visibility=Visibility.PUBLIC, instructions=instructions, max_tokens=16)
    voter = make_user("vera")
    battle = battle_start(user=voter, mode=Mode.PUBLIC, prompt="What is the sea?", rng=random.Random(0))
    first = _generate(battle.turns.get())
    for answer in first.values():
        assert answer.content.strip() and 0 < answer.completion_tokens <= 16
        assert answer.first_token_ms is not None and answer.latency_ms >= answer.first_token_ms
        assert answer.context["turns_included"] == 1
        events = redis_client().xrange(f"atelier:reply:{answer.pk}")
        assert events[-1][1][b"event"] == b"done"  # followers of the live stream got the end

    second = _generate(battle_turn_add(battle=battle, prompt="And the sky?"))
    for answer in second.values():
        assert answer.turn.number == 2 and answer.context["turns_included"] == 3  # prompt, own answer, prompt
