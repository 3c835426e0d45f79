from django.conf import settings
from django.db import models


class Collection(models.Model):
    """A named set of documents an assistant retrieves from.

    Only the collection itself exists so far: documents, chunks and retrieval arrive with the knowledge
    issue. Assistant versions already point at collections, so that issue adds no migration to them.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections")
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="collection_unique_owner_name")]

    def __str__(self) -> str:
        return self.name
