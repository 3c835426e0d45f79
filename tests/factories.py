"""The objects most tests start from, made through the services as a person would make them."""

from django.test import Client

from apps.accounts.models import Role
from apps.accounts.services import user_create
from apps.assistants.models import Assistant, Visibility
from apps.assistants.selectors import chat_model_default
from apps.assistants.services import AssistantConfig, assistant_create

PASSWORD = "correct horse battery staple"


def make_user(name: str, *, role: str = Role.MEMBER):
    """A signed-up user; another `role` (labeler, admin) is given as an admin gives it, after sign-up."""
    user = user_create(username=name, email=f"{name}@example.com", password=PASSWORD)
    if role != user.role:
        user.role = role
        user.save(update_fields=["role"])
    return user


def make_assistant(owner, *, name: str = "Helper", visibility: str = Visibility.PRIVATE, **config) -> Assistant:
    """An assistant on the served chat model (or `base_model=`), greedy and short unless told otherwise."""
    config = {"name": name, "base_model": chat_model_default(), "temperature": 0.0, "max_tokens": 24, **config}
    return assistant_create(owner=owner, config=AssistantConfig(**config), visibility=visibility)


def signed_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client
