from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from apps.assistants.selectors import assistant_list_owned, gallery_list


@login_required
def assistant_list(request):
    return render(request, "assistants/list.html", {"assistants": assistant_list_owned(user=request.user)})


@login_required
def gallery(request):
    query = request.GET.get("q", "")
    return render(request, "assistants/gallery.html", {"assistants": gallery_list(query=query), "query": query})
