"""Forms for the fine-tuning dataset pages, the chat page's "add to a dataset" actions, and the adapter pages.
They only parse and check input; services.py does the writing."""

from django import forms

from apps.assistants.models import Assistant
from apps.assistants.selectors import chat_model_choices, chat_model_default
from apps.finetune.models import Adapter, DatasetKind, DatasetVersion, Method
from apps.finetune.selectors import adapter_list_owned
from apps.finetune.services import METHOD_FOR_KIND, training_settings_default
from apps.finetune.training_settings import ALL_MODULES
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


# --- adapters ------------------------------------------------------------------------------------------


class AdapterUploadForm(forms.Form):
    name = forms.CharField(max_length=100)
    base_model = forms.ModelChoiceField(queryset=chat_model_choices(), empty_label=None, label="Base model")
    weights = forms.FileField(
        label="adapter_model.safetensors",
        help_text="The LoRA weights, in safetensors only: a pickle (.bin, .pt) is refused, whatever its name.",
        widget=forms.ClearableFileInput(attrs={"accept": ".safetensors"}),
    )
    config = forms.FileField(
        label="adapter_config.json",
        help_text="PEFT's config file, saved next to the weights.",
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.fields["base_model"].initial = chat_model_default()


class AdapterAttachForm(forms.Form):
    assistant = forms.ModelChoiceField(queryset=Assistant.objects.none(), empty_label=None, label="Assistant")

    def __init__(self, *args, adapter: Adapter, **kwargs):
        super().__init__(*args, **kwargs)
        # Only the adapter owner's own assistants on the adapter's base model.
        self.fields["assistant"].queryset = Assistant.objects.filter(
            owner_id=adapter.owner_id, current_version__base_model_id=adapter.base_model_id
        ).select_related("current_version")


# --- jobs ------------------------------------------------------------------------------------------------


class TrainForm(forms.Form):
    """The Train button and its advanced section. A blank field keeps the default fitted to the dataset
    (`training_settings_default`), shown as the field's placeholder."""

    start_adapter = forms.ModelChoiceField(
        queryset=Adapter.objects.none(),
        required=False,
        label="Start from adapter",
        help_text="DPO only: the SFT adapter to start from and to compare against (else the base model).",
    )
    rank = forms.IntegerField(min_value=1, max_value=64, required=False, label="LoRA rank")
    alpha = forms.FloatField(min_value=0.01, required=False, label="LoRA alpha")
    dropout = forms.FloatField(min_value=0, max_value=0.9, required=False, label="LoRA dropout")
    target_modules = forms.MultipleChoiceField(
        choices=[(m, m) for m in ALL_MODULES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Target modules",
        help_text="None ticked: all of them.",
    )
    learning_rate = forms.FloatField(min_value=1e-7, max_value=1.0, required=False, label="Learning rate")
    epochs = forms.IntegerField(min_value=1, max_value=50, required=False, label="Epochs")
    batch_size = forms.IntegerField(min_value=1, max_value=256, required=False, label="Batch size")
    max_length = forms.IntegerField(min_value=8, max_value=8192, required=False, label="Max length (tokens)")
    seed = forms.IntegerField(min_value=0, required=False, label="Seed")

    def __init__(self, *args, owner, version: DatasetVersion, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = version
        self.method = METHOD_FOR_KIND[DatasetKind(version.dataset.kind)]
        if self.method == Method.DPO:
            self.fields["start_adapter"].queryset = adapter_list_owned(user=owner)
        else:
            del self.fields["start_adapter"]
        defaults = training_settings_default(method=self.method, examples=version.example_count)
        shown = {"learning_rate": defaults.learning_rate, "epochs": defaults.epochs, "batch_size": defaults.batch_size}
        shown |= {"max_length": defaults.max_length, "seed": defaults.seed}
        shown |= {"rank": defaults.lora.rank, "alpha": defaults.lora.alpha, "dropout": defaults.lora.dropout}
        for name, value in shown.items():
            self.fields[name].widget.attrs["placeholder"] = str(value)

    def settings(self) -> dict:
        """The chosen settings for finetune_job_create, which keeps the default for a blank one."""
        return {name: value for name, value in self.cleaned_data.items() if name != "start_adapter"}
