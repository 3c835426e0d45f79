from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from apps.accounts.models import User


@admin.register(User)
class AtelierUserAdmin(UserAdmin):
    list_display = ("username", "email", "role", "is_active", "date_joined")
    list_filter = ("role", "is_active")
    fieldsets = (*UserAdmin.fieldsets, ("Atelier", {"fields": ("role",)}))
    readonly_fields = ("is_staff",)  # follows the role (see User.save)
