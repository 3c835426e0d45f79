"""The /out interstitial: it shows where a link really goes (userinfo resolved, internationalized names in
punycode beside their Unicode form, numeric hosts as addresses), asks for one click, sends no referrer, refuses
anything but http(s), and never redirects."""

import random

import pytest
from django.test import Client
from django.urls import reverse

from apps.core.links import RefusedLink, destination_inspect
from tests.core.adversarial import FUZZ_PIECES
from tests.html_tree import html_parse


def _outbound(u: str):
    response = Client().get(reverse("outbound"), {"u": u})
    assert "Location" not in response  # never a redirect, whatever `u` holds
    return response, html_parse(response.content.decode())


def _marked(tree, name: str):
    found = [e for e in tree.iter() if name in e.attrs]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("u", "host", "url"),
    [
        ("https://mybank.example@attacker.example/login", "attacker.example", "https://attacker.example/login"),
        ("https://mybank.example:pw@attacker.example:8443/", "attacker.example", "https://attacker.example:8443/"),
        ("https://a.example%2F@attacker.example/", "attacker.example", "https://attacker.example/"),
        ("//attacker.example/p?q=1#f", "attacker.example", "http://attacker.example/p?q=1#f"),
        ("HTTPS://ATTACKER.example:443", "attacker.example", "https://attacker.example/"),
        ("https:///attacker.example/x", "attacker.example", "https://attacker.example/x"),
        ("https://attacker.example\\@mybank.example/", "attacker.example", "https://attacker.example/@mybank.example/"),
        ("http://0x7f.1/admin", "127.0.0.1", "http://127.0.0.1/admin"),
        ("http://2130706433/", "127.0.0.1", "http://127.0.0.1/"),
        ("http://[::1]:8000/", "[::1]", "http://[::1]:8000/"),
        ("https://%61ttacker.example/", "attacker.example", "https://attacker.example/"),
        ('https://attacker.example/a b"<c>', "attacker.example", "https://attacker.example/a%20b%22%3Cc%3E"),
        ("https://attacker.example/\u202egnp.exe", "attacker.example", "https://attacker.example/gnp.exe"),
    ],
)
def test_the_page_shows_the_real_host_and_continues_there_in_one_click(u, host, url):
    response, tree = _outbound(u)
    assert response.status_code == 200
    assert _marked(tree, "data-out-host").text == host
    assert _marked(tree, "data-out-url").text == url
    link = _marked(tree, "data-out-continue")
    assert link.attrs["href"] == url  # what the page shows is exactly where the click goes
    assert set(link.attrs["rel"].split()) >= {"noopener", "noreferrer"}
    assert link.attrs["referrerpolicy"] == "no-referrer"
    assert response["Referrer-Policy"] == "no-referrer"


def test_userinfo_is_named_as_the_disguise_it_is():
    _, tree = _outbound("https://mybank.example@attacker.example/login")
    warnings = [li.text for li in _marked(tree, "data-out-warnings").find_all("li")]
    assert warnings == [
        "The link starts with “mybank.example@” to look like another address; it goes to attacker.example."
    ]


APPLE_WARNINGS = [
    "“\u0430pple” mixes Cyrillic and Latin letters.",
    "The name looks like apple.com, but it is a different name.",
]


@pytest.mark.parametrize(
    ("u", "host", "unicode", "warnings"),
    [
        (
            "https://xn--pple-43d.com/",
            "xn--pple-43d.com",
            "\u0430pple.com",
            [
                "“\u0430pple” mixes Cyrillic and Latin letters.",
                "The name looks like apple.com, but it is a different name.",
            ],
        ),
        (  # the same name, crafted in Unicode rather than punycode
            "https://\u0430pple.com/",
            "xn--pple-43d.com",
            "\u0430pple.com",
            [
                "“\u0430pple” mixes Cyrillic and Latin letters.",
                "The name looks like apple.com, but it is a different name.",
            ],
        ),
        (  # one script only, so only the skeleton gives it away
            "https://xn--80aa0cbo65f.com/",
            "xn--80aa0cbo65f.com",
            "\u0440\u0430\u0443\u0440\u0430\u04cf.com",
            ["The name looks like paypal.com, but it is a different name."],
        ),
        ("https://bücher.example/", "xn--bcher-kva.example", "bücher.example", []),
    ],
)
def test_an_internationalized_host_shows_in_punycode_beside_its_unicode_form(u, host, unicode, warnings):
    response, tree = _outbound(u)
    assert response.status_code == 200
    assert _marked(tree, "data-out-host").text == host
    assert _marked(tree, "data-out-host-unicode").text == unicode
    shown = _marked(tree, "data-out-warnings")
    assert ([li.text for li in shown.find_all("li")] if shown else []) == warnings
    assert _marked(tree, "data-out-continue").attrs["href"] == f"https://{host}/"


@pytest.mark.parametrize(
    "u",
    [
        "",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        " \tjava\nscript:alert(1)",
        "javascript://attacker.example/%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        "ftp://attacker.example/",
        "mailto:someone@attacker.example",
        "/chats/",
        "attacker.example",
        "https:attacker.example",
        "http:/attacker.example",
        "http://[::1/",
        "http://attacker.example:99999/",
        "http://att acker.example/",
        "http://999.1.1.1/",
        "https://xn--zz.example/",
        "https://xn--a.example/",
    ],
)
def test_anything_but_an_http_url_with_a_host_is_refused_without_a_link(u):
    response, tree = _outbound(u)
    assert response.status_code == 400
    assert _marked(tree, "data-out-refusal").text
    assert _marked(tree, "data-out-continue") is None
    assert not [a for a in tree.find_all("a") if (a.attrs.get("href") or "").lower().startswith(("javascript", "data"))]


def test_the_rebuilt_address_reads_back_as_itself():
    """What the page shows and links to is a fixed point: inspecting it again gives the same address and host,
    so there is no second reading of it (by the browser, say) that goes elsewhere. Anything else is refused."""
    rng = random.Random(7)  # fixed: a failure reproduces
    for _ in range(1500):
        text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 25)))
        for u in (text, f"https://{text}", f"//{text}"):
            try:
                destination = destination_inspect(u, base_scheme="https")
            except RefusedLink:
                continue
            again = destination_inspect(destination.url, base_scheme="https")
            assert (again.url, again.host, again.userinfo) == (destination.url, destination.host, ""), u
