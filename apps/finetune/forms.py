"""Forms for the fine-tuning dataset pages and the chat page's "add to a dataset" actions."""

from django import forms

from apps.finetune.models import DatasetKind
from apps.labeling.models import TaskSet
from apps.labeling.selectors import SPLITS

NAME_HELP = "A new name makes a new dataset; the name of one of yours adds a new version to it."


class UploadForm(forms.Form):
    name = forms.CharField(max_length=100, label="Dataset", help_text=NAME_HELP)
    kind = forms.ChoiceField(choices=DatasetKind.choices, label="Kind", initial=DatasetKind.SFT)
    file = forms.FileField(
        label="JSONL file",
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.json,.txt"}),
        help_text='Conversations: one {"messages": [...]} per line (OpenAI\'s chat fine-tuning format). Preference '
        'pairs: one {"prompt", "chosen", "rejected"} per line (TRL\'s conversational format, as the labeling '
        "panel exports it), or Anthropic HH transcripts. Checked whole: a file with any problem imports nothing.",
    )


class OverrideForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why these findings are acceptable. Kept with the version, with your name and the time.",
    )


class CurateGoodForm(forms.Form):
    dataset = forms.CharField(max_length=100)


class CurateEditForm(forms.Form):
    content = forms.CharField(strip=False)
    dataset = forms.CharField(max_length=100)
    preference_dataset = forms.CharField(max_length=100)


class TaskSetImportForm(forms.Form):
    task_set = forms.ModelChoiceField(queryset=TaskSet.objects.order_by("-created_at"), label="Task set")
    split = forms.ChoiceField(choices=[(s, s.capitalize()) for s in SPLITS], initial="train", label="Split")
    name = forms.CharField(max_length=100, label="Preference dataset", help_text=NAME_HELP)
