"""Arena pages. Battles resolve through selectors that check the viewer (only a battle's own user may
open it; anything else is a 404). Names stay out of the page until the battle has its vote."""

import json

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.permissions import role_check
from apps.arena import services
from apps.arena.generation import answer_done_event
from apps.arena.leaderboard import leaderboard_context
from apps.arena.models import BattleAnswer, Mode, Outcome
from apps.arena.selectors import (
    arena_versions,
    battle_answer_get_for_user,
    battle_get_for_user,
    battle_turns,
    leaderboard_get,
    preference_pairs_export,
)
from apps.chat.live import reply_events_follow
from apps.core.rendering import untrusted_markdown_render
from apps.core.sse import sse_event, sse_response

ARENA_BLURBS = {
    Mode.PUBLIC: "The current versions of public assistants.",
    Mode.PERSONAL: "Every version of your own assistants, and public ones: compare v3 with v4, or a fine-tune "
    "with its base.",
}


def _battle_or_404(request, battle_id):
    battle = battle_get_for_user(battle_id=battle_id, user=request.user)
    if battle is None:
        raise Http404("No such battle.")
    return battle


@login_required
@require_GET
def arena_index(request):
    role_check(user=request.user, area="member")
    context = {
        "arenas": [
            (mode, mode.label, ARENA_BLURBS[mode], list(arena_versions(mode=mode, user=request.user))) for mode in Mode
        ],
        "recent": request.user.battles.select_related("version_a", "version_b")[:20],
        "nav_active": "arena",
    }
    return render(request, "arena/index.html", context)


@login_required
@require_POST
def battle_create(request):
    role_check(user=request.user, area="member")
    mode = request.POST.get("mode", "")
    picked = [request.POST.get("version_a", ""), request.POST.get("version_b", "")]
    allowed = arena_versions(mode=mode, user=request.user).filter(pk__in=[p for p in picked if p.isdigit()])
    versions = {str(version.pk): version for version in allowed}
    if any(p and p not in versions for p in picked):
        messages.error(request, "You can only battle versions you may use in this arena.")
        return redirect("arena:index")
    try:
        battle = services.battle_start(
            user=request.user,
            mode=mode,
            prompt=request.POST.get("prompt", ""),
            version_a=versions.get(picked[0]),
            version_b=versions.get(picked[1]),
        )
    except services.ArenaError as error:
        messages.error(request, str(error))
        return redirect("arena:index")
    return redirect("arena:battle", battle.pk)


@never_cache
@login_required
@require_GET
def battle_detail(request, battle_id):
    battle = _battle_or_404(request, battle_id)
    turns = battle_turns(battle=battle)
    answers = [answer for entry in turns for answer in entry["answers"]]
    for answer in answers:
        if answer.finished:
            answer.html = mark_safe(untrusted_markdown_render(answer.content))  # noqa: S308 (the one sanitizer)
    context = {
        "battle": battle,
        "turns": turns,
        "busy": not all(answer.finished for answer in answers),
        "outcomes": Outcome.choices,
        "nav_active": "arena",
    }
    return render(request, "arena/battle.html", context)


@login_required
@require_POST
def battle_turn(request, battle_id):
    battle = _battle_or_404(request, battle_id)
    try:
        services.battle_turn_add(battle=battle, prompt=request.POST.get("prompt", ""))
    except services.ArenaError as error:
        messages.error(request, str(error))
    return redirect("arena:battle", battle.pk)


@login_required
@require_POST
def battle_vote_view(request, battle_id):
    battle = _battle_or_404(request, battle_id)
    try:
        services.battle_vote(battle=battle, user=request.user, outcome=request.POST.get("outcome", ""))
    except services.ArenaError as error:
        messages.error(request, str(error))
    return redirect("arena:battle", battle.pk)


async def answer_events(request, answer_id):
    """Server-sent events for one side's answer: every token from the start, then `done` with the HTML."""
    user = await request.auser()
    answer = await sync_to_async(battle_answer_get_for_user)(answer_id=answer_id, user=user)
    if answer is None:
        raise Http404("No such answer.")

    async def events():
        if answer.finished:
            yield sse_event(answer_done_event(answer), event="done")
            return
        async for event, data in reply_events_follow(message_id=answer.pk):
            if event == "idle":  # quiet: did its stream expire, or its worker die?
                current = await BattleAnswer.objects.aget(pk=answer.pk)
                if current.finished:
                    yield sse_event(await sync_to_async(answer_done_event)(current), event="done")
                    return
                yield ": waiting\n\n"
                continue
            yield sse_event(data, event=event)
            if event == "done":
                return

    return sse_response(events())


@require_GET
def leaderboard_public(request):
    """The public arena's board: readable by anyone, from the cached snapshot."""
    context = {**leaderboard_context(leaderboard_get(mode=Mode.PUBLIC)), "mode": Mode.PUBLIC, "nav_active": "arena"}
    return render(request, "arena/leaderboard.html", context)


@login_required
@require_GET
def leaderboard_mine(request):
    snapshot = leaderboard_get(mode=Mode.PERSONAL, owner=request.user)
    context = {**leaderboard_context(snapshot), "mode": Mode.PERSONAL, "nav_active": "arena"}
    return render(request, "arena/leaderboard.html", context)


@login_required
@require_GET
def preferences_export(request, mode: str):
    """Rated decisive votes as TRL conversational preference data (JSON Lines): your own arena's, or
    (admins) the public arena's."""
    if mode == Mode.PERSONAL:
        rows = preference_pairs_export(mode=mode, owner=request.user)
    elif mode == Mode.PUBLIC:
        role_check(user=request.user, area="admin")
        rows = preference_pairs_export(mode=mode)
    else:
        raise Http404("No such arena.")
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    response = HttpResponse(body, content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="arena-{mode}-preferences.jsonl"'
    return response
