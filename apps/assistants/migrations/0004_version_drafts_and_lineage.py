"""Drafts and lineage for the learning loop: AssistantVersion.parent and .published_at.

Every version that exists already was current when it was saved, so it is published at its creation time."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import F


def publish_existing(apps, schema_editor):
    apps.get_model("assistants", "AssistantVersion").objects.update(published_at=F("created_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("assistants", "0003_adapter_foreign_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="assistantversion",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                help_text="The version this one was improved from (a fine-tune of it).",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="children",
                to="assistants.assistantversion",
            ),
        ),
        migrations.AddField(
            model_name="assistantversion",
            name="published_at",
            field=models.DateTimeField(
                blank=True, help_text="When it became usable; null while it is a draft awaiting its owner.", null=True
            ),
        ),
        migrations.RunPython(publish_existing, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="assistantversion",
            constraint=models.CheckConstraint(condition=~models.Q(parent=F("pk")), name="assistantversion_not_own_parent"),
        ),
    ]
