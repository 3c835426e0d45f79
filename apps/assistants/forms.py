"""Forms for the assistant builder. They only parse and check input; services.py does the writing."""

from datetime import datetime, timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.assistants.models import MAX_STARTER_PROMPTS, Assistant, Visibility
from apps.assistants.selectors import chat_model_choices, chat_model_default
from apps.assistants.services import AVATAR_MAX_BYTES, AssistantConfig
from apps.finetune.models import Adapter
from apps.knowledge.models import Collection

STARTER_PROMPT_MAX_LENGTH = 200


class StarterPromptsWidget(forms.MultiWidget):
    """MAX_STARTER_PROMPTS text inputs that all post under one name, read back with `getlist`, so that a
    request carrying more prompts than the page shows is refused instead of silently truncated."""

    def __init__(self, attrs=None):
        widgets = [
            forms.TextInput(attrs={"aria-label": f"Starter prompt {i + 1}", "placeholder": f"Starter prompt {i + 1}"})
            for i in range(MAX_STARTER_PROMPTS)
        ]
        super().__init__(widgets, attrs)

    def decompress(self, value):
        return list(value or [])

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        for subwidget in context["widget"]["subwidgets"]:
            subwidget["name"] = name
        return context

    def value_from_datadict(self, data, files, name):
        return data.getlist(name) if hasattr(data, "getlist") else list(data.get(name) or [])

    def value_omitted_from_data(self, data, files, name):
        return name not in data


class StarterPromptsField(forms.Field):
    widget = StarterPromptsWidget

    def to_python(self, value):
        if value in self.empty_values:
            return []
        if isinstance(value, str):
            value = [value]
        return [str(prompt).strip() for prompt in value if str(prompt).strip()]

    def validate(self, value):
        super().validate(value)
        if len(value) > MAX_STARTER_PROMPTS:
            raise ValidationError(f"At most {MAX_STARTER_PROMPTS} starter prompts.", code="too_many")
        if any(len(prompt) > STARTER_PROMPT_MAX_LENGTH for prompt in value):
            raise ValidationError(
                f"Keep each starter prompt under {STARTER_PROMPT_MAX_LENGTH} characters.", code="too_long"
            )


class AdapterChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Adapter) -> str:
        return f"{obj.name} (for {obj.base_model})"


class AssistantForm(forms.Form):
    name = forms.CharField(max_length=80)
    slug = forms.SlugField(
        max_length=60,
        required=False,
        label="Address",
        help_text="Used in the assistant's URLs. Left empty, one is made from the name. It cannot change later.",
    )
    description = forms.CharField(
        max_length=300, required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="Shown on its card."
    )
    instructions = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text="The system prompt. <code>{{date}}</code> becomes today's date and <code>{{user_name}}</code> "
        "the name of the person chatting.",
    )
    starter_prompts = StarterPromptsField(
        required=False, help_text=f"Up to {MAX_STARTER_PROMPTS} suggestions shown when a chat starts."
    )
    base_model = forms.ModelChoiceField(queryset=chat_model_choices(), empty_label=None, label="Base model")
    adapter = AdapterChoiceField(
        queryset=Adapter.objects.none(),
        required=False,
        empty_label="None: the base model answers",
        label="Fine-tune",
        help_text="One of your fine-tunes (LoRA adapters) made for the chosen base model.",
    )
    temperature = forms.FloatField(
        min_value=0, max_value=2, initial=0.7, widget=forms.NumberInput(attrs={"step": "0.05"})
    )
    top_p = forms.FloatField(
        max_value=1, initial=0.95, label="Top p", widget=forms.NumberInput(attrs={"step": "0.01", "min": "0.01"})
    )
    max_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=512, label="Max tokens")
    repetition_penalty = forms.FloatField(
        min_value=1,
        max_value=2,
        initial=1.1,
        label="Repetition penalty",
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    knowledge_collections = forms.ModelMultipleChoiceField(
        queryset=Collection.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Knowledge collections",
    )
    # Optional in the form so a post from before these fields keeps the defaults.
    knowledge_top_k = forms.IntegerField(
        min_value=1, max_value=20, required=False, initial=4, label="Passages per answer"
    )
    knowledge_min_score = forms.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        initial=0.0,
        label="Minimum relevance",
        help_text="0 to 1: leave out passages ranked low by both the meaning and the keyword search.",
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    knowledge_share_documents = forms.BooleanField(
        required=False,
        label="Visitors may read whole cited documents",
        help_text="Otherwise people chatting through a share link see only the cited passages.",
    )
    canary = forms.CharField(
        max_length=64,
        required=False,
        label="Canary",
        help_text="A secret word you also put in the instructions. An answer that repeats it is withheld and "
        "recorded for you: a sign someone made the assistant reveal its instructions.",
    )
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.PRIVATE, widget=forms.RadioSelect)

    def __init__(self, *args, owner, assistant: Assistant | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound and "base_model" not in self.initial:  # a posted form has its own choice
            self.fields["base_model"].initial = chat_model_default()
        self.fields["knowledge_collections"].queryset = Collection.objects.filter(owner=owner)
        # Only the owner's own adapters are choices: another user's id posted here is "not one of the choices".
        self.fields["adapter"].queryset = Adapter.objects.filter(owner=owner).select_related("base_model")
        if assistant is not None:
            slug = self.fields["slug"]
            slug.disabled, slug.required, slug.initial = True, False, assistant.slug
            slug.help_text = "The address cannot change."

    @classmethod
    def initial_for(cls, assistant: Assistant) -> dict:
        version = assistant.current_version
        if version is None:
            return {"slug": assistant.slug, "visibility": assistant.visibility}
        return {
            "name": version.name,
            "slug": assistant.slug,
            "description": version.description,
            "instructions": version.instructions,
            "starter_prompts": list(version.starter_prompts),
            "base_model": version.base_model_id,
            "adapter": version.adapter_id,
            "temperature": version.temperature,
            "top_p": version.top_p,
            "max_tokens": version.max_tokens,
            "repetition_penalty": version.repetition_penalty,
            "knowledge_collections": list(version.knowledge_collections.all()),
            "knowledge_top_k": version.knowledge_top_k,
            "knowledge_min_score": version.knowledge_min_score,
            "knowledge_share_documents": version.knowledge_share_documents,
            "canary": version.canary,
            "visibility": assistant.visibility,
        }

    def clean_top_p(self):
        top_p = self.cleaned_data["top_p"]
        if top_p is not None and top_p <= 0:
            raise ValidationError("Top p must be above 0.")
        return top_p

    def clean(self):
        data = super().clean()
        adapter, base_model = data.get("adapter"), data.get("base_model")
        if adapter is not None and base_model is not None and adapter.base_model_id != base_model.pk:
            self.add_error("adapter", f"{adapter.name} was made for {adapter.base_model}, not {base_model}.")
        return data

    def config(self) -> AssistantConfig:
        data = self.cleaned_data
        return AssistantConfig(
            name=data["name"],
            base_model=data["base_model"],
            description=data["description"],
            instructions=data["instructions"],
            starter_prompts=data["starter_prompts"],
            adapter=data.get("adapter"),
            temperature=data["temperature"],
            top_p=data["top_p"],
            max_tokens=data["max_tokens"],
            repetition_penalty=data["repetition_penalty"],
            knowledge_collections=tuple(data["knowledge_collections"]),
            knowledge_top_k=data.get("knowledge_top_k") or AssistantConfig.knowledge_top_k,
            knowledge_min_score=data.get("knowledge_min_score") or 0.0,
            knowledge_share_documents=bool(data.get("knowledge_share_documents")),
            canary=data.get("canary") or "",
        )


class AvatarForm(forms.Form):
    avatar = forms.FileField(
        help_text=f"PNG, JPEG, WebP or GIF up to {AVATAR_MAX_BYTES // (1024 * 1024)} MB; "
        "stored as a 256×256 PNG. SVG is not accepted.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/png,image/jpeg,image/webp,image/gif"}),
    )


class ShareIssueForm(forms.Form):
    EXPIRY_CHOICES = [("", "Never"), ("1", "In 1 day"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days")]

    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False, label="Expires"
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Or expires at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def expiry(self) -> datetime | None:
        """An explicit date wins over the "in N days" choice; None means the link never expires."""
        if self.cleaned_data.get("expires_at"):
            return self.cleaned_data["expires_at"]
        if self.cleaned_data.get("expires_in_days"):
            return timezone.now() + timedelta(days=self.cleaned_data["expires_in_days"])
        return None


class ReportForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "What is wrong with this assistant?"}),
    )
