"""Curating from chat: the owner marks an answer good (the exchange up to it, under the instructions it was given, as
an SFT example) or edits it into the ideal answer (SFT with the edit, and the edit preferred over the original);
only the owner, only by POST, and a refused exchange adds nothing."""

import pytest
from django.urls import reverse

from apps.assistants.models import Visibility
from apps.chat import services as chat
from apps.chat.models import Message
from apps.finetune.models import Dataset, DatasetExample, DatasetSource, DatasetVersion
from tests.factories import make_assistant, make_user, signed_in
from tests.html_tree import html_parse

pytestmark = pytest.mark.django_db
INSTRUCTIONS = "You are Pip, a terse tutor of {{user_name}}."


def finish(reply: Message, content: str) -> Message:
    """Stand in for the worker: these tests are about what is kept, not about generation."""
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, content=content)
    reply.refresh_from_db()
    return reply


@pytest.fixture
def chat_with_two_answers(models_ready):
    """ada's conversation: two questions, two finished answers."""
    ada = make_user("ada")
    conversation = chat.conversation_start(
        assistant=make_assistant(ada, instructions=INSTRUCTIONS), owner=ada, first_message="What is 2+2?"
    )
    first = finish(Message.objects.get(conversation=conversation, role="assistant"), "4.")
    _, second = chat.message_send(conversation=conversation, content="And 3+3?")
    return ada, conversation, first, finish(second, "It is 5.")


def test_mark_good_adds_the_exchange_up_to_that_answer(chat_with_two_answers):
    ada, conversation, first, second = chat_with_two_answers
    client = signed_in(ada)
    page = html_parse(client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode())
    assert len([e for e in page.iter() if "data-curate" in e.attrs]) == 2  # one per finished answer

    response = client.post(reverse("finetune:curate_good", args=[first.pk]), {"dataset": "Good answers"})
    assert response.status_code == 302 and response.url.endswith(f"#m-{first.pk}")
    version = DatasetVersion.objects.get(dataset__owner=ada, dataset__name="Good answers")
    assert (version.source, version.source_detail) == (DatasetSource.CHATS, f"Marked good: answer {first.pk}")
    [example] = version.examples.all()
    assert example.record == {
        "messages": [
            {"role": "system", "content": "You are Pip, a terse tutor of ada."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
        ]
    }
    assert example.line == 0 and example.tokens > 0

    # The second answer: its whole branch, into the next version (the first example stays).
    client.post(reverse("finetune:curate_good", args=[second.pk]), {"dataset": "Good answers"})
    latest = DatasetVersion.objects.get(dataset__name="Good answers", number=2)
    records = [e.record["messages"] for e in latest.examples.order_by("index")]
    assert records[0] == example.record["messages"]
    assert [m["content"] for m in records[1]][1:] == ["What is 2+2?", "4.", "And 3+3?", "It is 5."]


def test_an_edit_becomes_an_sft_example_and_a_preference_pair_over_the_original(chat_with_two_answers):
    ada, _, _, second = chat_with_two_answers
    client = signed_in(ada)
    client.post(
        reverse("finetune:curate_edit", args=[second.pk]),
        {"content": "6.", "dataset": "Good answers", "preference_dataset": "Edits"},
    )
    [sft] = DatasetExample.objects.filter(version__dataset__name="Good answers")
    [pair] = DatasetExample.objects.filter(version__dataset__name="Edits")
    prompt = [
        {"role": "system", "content": "You are Pip, a terse tutor of ada."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert sft.record == {"messages": [*prompt, {"role": "assistant", "content": "6."}]}
    assert pair.record == {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "6."}],
        "rejected": [{"role": "assistant", "content": "It is 5."}],
    }
    assert Dataset.objects.get(name="Edits").kind == "preference"

    # An unchanged "edit" teaches no preference: refused, and nothing is added.
    response = client.post(
        reverse("finetune:curate_edit", args=[second.pk]),
        {"content": "It is 5.", "dataset": "Good answers", "preference_dataset": "Edits"},
        follow=True,
    )
    assert "use “Mark good”" in response.content.decode()
    assert DatasetVersion.objects.count() == 2
    # A dataset of the other kind is refused by name, and both or neither are added.
    client.post(
        reverse("finetune:curate_edit", args=[second.pk]),
        {"content": "Six.", "dataset": "Good answers", "preference_dataset": "Good answers"},
    )
    assert DatasetVersion.objects.count() == 2


def test_only_the_owner_can_curate_and_only_by_post(chat_with_two_answers):
    ada, _, first, _ = chat_with_two_answers
    eve = signed_in(make_user("eve"))
    assert eve.post(reverse("finetune:curate_good", args=[first.pk]), {"dataset": "Stolen"}).status_code == 404
    edit = {"content": "x", "dataset": "Stolen", "preference_dataset": "Stolen pairs"}
    assert eve.post(reverse("finetune:curate_edit", args=[first.pk]), edit).status_code == 404
    assert not Dataset.objects.exists()
    # A question is not an answer, and GET writes nothing.
    question = first.parent
    owner = signed_in(ada)
    assert owner.post(reverse("finetune:curate_good", args=[question.pk]), {"dataset": "Q"}).status_code == 404
    assert owner.get(reverse("finetune:curate_good", args=[first.pk]), {"dataset": "Q"}).status_code == 405
    assert not Dataset.objects.exists()


def test_an_unfinished_answer_offers_nothing_to_curate(models_ready):
    ada = make_user("ada")
    conversation = chat.conversation_start(assistant=make_assistant(ada), owner=ada, first_message="Hi")
    pending = Message.objects.get(conversation=conversation, role="assistant")
    client = signed_in(ada)
    page = html_parse(client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode())
    assert not [e for e in page.iter() if "data-curate" in e.attrs]
    assert client.post(reverse("finetune:curate_good", args=[pending.pk]), {"dataset": "G"}).status_code == 404


def test_curating_from_someone_elses_public_assistant_leaves_its_instructions_out(models_ready):
    ada, eve = make_user("ada"), make_user("eve")
    public = make_assistant(ada, instructions="Secret house rules.", visibility=Visibility.PUBLIC)
    conversation = chat.conversation_start(assistant=public, owner=eve, first_message="Hi there")
    answer = finish(Message.objects.get(conversation=conversation, role="assistant"), "Hello!")
    signed_in(eve).post(
        reverse("finetune:curate_edit", args=[answer.pk]),
        {"content": "Hello, eve!\r\nHow can I help?", "dataset": "Mine", "preference_dataset": "Mine pairs"},
    )
    [example] = DatasetExample.objects.filter(version__dataset__owner=eve, version__dataset__name="Mine")
    assert example.record["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello, eve!\nHow can I help?"},
    ]
