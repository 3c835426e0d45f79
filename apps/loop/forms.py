"""The "Improve this assistant" filters. They only parse and check input; the selectors gather, services write."""

from django import forms

from apps.labeling.models import TaskSet
from apps.loop.selectors import ARENA, LABELING, PairFilters, loop_task_sets


class TaskSetChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, task_set: TaskSet) -> str:
        return f"{task_set.name} ({task_set.created_at:%Y-%m-%d})"


class PairFilterForm(forms.Form):
    sources = forms.MultipleChoiceField(
        choices=[(LABELING, "Labeling consensus"), (ARENA, "Arena votes")],
        initial=[LABELING, ARENA],
        widget=forms.CheckboxSelectMultiple,
    )
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    task_sets = TaskSetChoiceField(
        queryset=TaskSet.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Labeling pairs from these task sets only; none chosen: every set with this assistant's answers.",
    )

    def __init__(self, *args, assistant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["task_sets"].queryset = loop_task_sets(assistant=assistant)

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def filters(self) -> PairFilters:
        data = self.cleaned_data
        return PairFilters(
            sources=tuple(data["sources"]),
            since=data.get("since"),
            until=data.get("until"),
            task_set_ids=tuple(sorted(task_set.pk for task_set in data.get("task_sets") or ())),
        )
