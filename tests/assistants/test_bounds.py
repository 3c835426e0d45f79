"""The engine's sampling bounds (inference/sampler.py) are the one source: the builder's form and the
version's constraints may be narrower (product choices), never wider than what the engine accepts."""

import pytest
from django.core.exceptions import ValidationError

from apps.assistants.forms import AssistantForm
from apps.assistants.models import AssistantVersion
from inference.sampler import SAMPLING_BOUNDS

ASSISTANT_SETTINGS = ("temperature", "top_p", "repetition_penalty")


@pytest.mark.django_db
@pytest.mark.parametrize("name", ASSISTANT_SETTINGS)
def test_the_builders_form_refuses_what_the_engine_would_refuse(name, django_user_model):
    bound = SAMPLING_BOUNDS[name]
    owner = django_user_model.objects.create_user(username="ada", password="x")
    for outside in (bound.low, bound.low - 0.5, bound.high + 0.01):
        if outside in bound:  # an inclusive low end is the engine's too; the product may still refuse it
            continue
        form = AssistantForm({name: str(outside)}, owner=owner)
        form.is_valid()
        assert name in form.errors, (name, outside)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ASSISTANT_SETTINGS)
def test_a_version_outside_the_engines_bounds_cannot_be_stored(name):
    bound = SAMPLING_BOUNDS[name]
    (constraint,) = [
        c.name for c in AssistantVersion._meta.constraints if c.name.startswith(f"assistantversion_{name}")
    ]
    for outside in (bound.low - 0.5, bound.high + 0.5):
        version = AssistantVersion(number=1, name="x", **{name: outside})
        with pytest.raises(ValidationError, match=constraint):
            version.validate_constraints()
