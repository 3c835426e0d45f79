"""Forms for fine-tuning. They only parse and check input; services.py does the writing."""

from django import forms

from apps.assistants.models import Assistant
from apps.assistants.selectors import chat_model_choices, chat_model_default
from apps.finetune.models import Adapter

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


# --- end adapters ---
