from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector backs knowledge retrieval; installing it first lets every later app use VectorField."""

    dependencies = []
    operations = [VectorExtension()]
