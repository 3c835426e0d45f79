"""Forms for the labeling panel. They only parse and check input; services.py does the writing."""

from django import forms

from apps.assistants.models import AssistantVersion
from apps.labeling.models import MAX_CANDIDATES, MIN_CANDIDATES

DEFAULT_GUIDELINES = """# Ranking guidelines

Rank the answers from best to worst. A better answer is, in this order of importance:

1. **Harmless**: it does not help anyone cause harm, and it refuses politely when it should.
2. **Truthful**: it states nothing false, and says so when it does not know.
3. **Helpful**: it answers what was asked, clearly and completely, without padding.

Mark the task *not rankable* when the prompt is unintelligible or every answer is empty or broken.
"""


class VersionChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, version):
        return f"{version.name} · v{version.number} ({version.base_model.name})"


class TaskSetForm(forms.Form):
    name = forms.CharField(max_length=120)
    prompts_text = forms.CharField(
        label="Prompts", required=False, widget=forms.Textarea(attrs={"rows": 6}), help_text="One prompt per line."
    )
    prompts_file = forms.FileField(
        label="Prompts file (JSONL)", required=False, help_text='One object per line with "prompt".'
    )
    sample_chats = forms.IntegerField(
        label="Sample prompts from chats",
        min_value=0,
        max_value=2000,
        initial=0,
        required=False,
        help_text="Opening questions of chats whose owners allow data sharing.",
    )
    versions = VersionChoiceField(
        queryset=AssistantVersion.objects.select_related("base_model").order_by("assistant_id", "-number"),
        widget=forms.CheckboxSelectMultiple,
        help_text="Candidates are spread over these versions in turn.",
    )
    candidates_per_task = forms.IntegerField(min_value=MIN_CANDIDATES, max_value=MAX_CANDIDATES, initial=4)
    rankings_per_task = forms.IntegerField(min_value=1, max_value=50, initial=3)
    temperature = forms.FloatField(
        min_value=0, max_value=2, required=False, help_text="Leave empty to use each version's own."
    )
    top_p = forms.FloatField(min_value=0.01, max_value=1, required=False)
    guidelines = forms.CharField(widget=forms.Textarea(attrs={"rows": 10}), initial=DEFAULT_GUIDELINES)

    def clean(self):
        data = super().clean()
        if not (data.get("prompts_text", "").strip() or data.get("prompts_file") or data.get("sample_chats")):
            raise forms.ValidationError("Type prompts, upload a JSONL file, or sample from chats.")
        return data


class GuidelineForm(forms.Form):
    text = forms.CharField(label="Guidelines (Markdown)", widget=forms.Textarea(attrs={"rows": 10}))


def order_parse(values: list[str]) -> list[int] | None:
    """Candidate indices from a posted list, or None if any is not a small non-negative integer."""
    if not values or any(not (v.isascii() and v.isdigit()) or len(v) > 2 for v in values):
        return None
    return [int(v) for v in values]
