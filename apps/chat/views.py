from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from apps.chat.selectors import conversation_list


@login_required
def conversation_list_view(request):
    query = request.GET.get("q", "")
    conversations = conversation_list(user=request.user, query=query)
    return render(request, "chat/list.html", {"conversations": conversations, "query": query, "nav_active": "chats"})


@login_required
def playground(request):
    return render(request, "chat/playground.html", {"nav_active": "playground"})
