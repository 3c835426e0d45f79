"""Forms for fine-tuning pages. Each area keeps its own section, below."""

from django import forms

from apps.finetune.models import Adapter, DatasetKind, DatasetVersion, Method
from inference.config import LORA_GROUP_MODULES, LORA_GROUPS

# --- jobs ------------------------------------------------------------------------------------------------

LORA_MODULES = tuple(module for group in LORA_GROUPS for module in LORA_GROUP_MODULES[group])


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
        choices=[(m, m) for m in LORA_MODULES],
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
        from apps.finetune.services import METHOD_FOR_KIND, training_settings_default

        super().__init__(*args, **kwargs)
        self.version = version
        self.method = METHOD_FOR_KIND[DatasetKind(version.dataset.kind)]
        if self.method == Method.DPO:
            self.fields["start_adapter"].queryset = Adapter.objects.filter(owner=owner)
        else:
            del self.fields["start_adapter"]
        defaults = training_settings_default(method=self.method, examples=version.example_count)
        shown = {"learning_rate": defaults.learning_rate, "epochs": defaults.epochs, "batch_size": defaults.batch_size}
        shown |= {"max_length": defaults.max_length, "seed": defaults.seed}
        shown |= {"rank": defaults.lora.rank, "alpha": defaults.lora.alpha, "dropout": defaults.lora.dropout}
        for name, value in shown.items():
            self.fields[name].widget.attrs["placeholder"] = str(value)

    def settings(self) -> dict:
        """The chosen settings for finetune_job_create (blank ones left out)."""
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if name != "start_adapter" and value not in (None, "", [])
        }
