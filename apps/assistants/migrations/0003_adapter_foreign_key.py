"""AssistantVersion.adapter: a free engine id becomes a foreign key to the owner's finetune.Adapter.

The old strings cannot be mapped: they named whatever the inference server had loaded under that id, with
no owner, file or hash on record, so no Adapter row can vouch for them. They are dropped: the column is
removed and a new, empty foreign key added, which applies on a database with versions (they answer with
their base model from now on, as they did whenever the engine did not have the id loaded).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("assistants", "0002_knowledge_retrieval_settings"),
        ("finetune", "0001_initial"),
    ]

    operations = [
        migrations.RemoveField(model_name="assistantversion", name="adapter"),
        migrations.AddField(
            model_name="assistantversion",
            name="adapter",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="versions",
                to="finetune.adapter",
            ),
        ),
    ]
