"""`{% train_form version %}`: the Train form of a dataset version (templates/finetune/_train_form.html), for the
dataset version page's {% block train_actions %}, built for the signed-in owner without the page's view."""

from django import template

from apps.finetune.forms import TrainForm

register = template.Library()


@register.inclusion_tag("finetune/_train_form.html", takes_context=True)
def train_form(context, version) -> dict:
    return {
        "version": version,
        "train_form": TrainForm(owner=context["request"].user, version=version),
        "csrf_token": context.get("csrf_token"),
    }
