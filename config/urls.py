from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Atelier administration"
admin.site.site_title = "Atelier admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("apps.accounts.urls")),
    path("assistants/", include("apps.assistants.urls")),
    path("knowledge/", include("apps.knowledge.urls")),
    path("finetune/", include("apps.finetune.urls")),
    path("", include("apps.chat.urls")),
    path("api/v1/", include("apps.api.urls")),
    path("arena/", include("apps.arena.urls")),
    path("labeling/", include("apps.labeling.urls")),
    path("finetune/", include("apps.finetune.urls")),
    path("", include("apps.core.urls")),
]
