"""Links in untrusted text: which may be links at all, which stay on this site, and what the /out interstitial
shows about where a link that leaves really goes.

Which links exist. Only http and https (with a host), mailto, and relative references (a path, a query or a
fragment, with no colon before the first "/") become links; anything else (`javascript:`, `data:`, `vbscript:`,
`file:`, an `https:` without `//`, a scheme disguised by percent-encoding) stays literal text.

Which stay on this site. The renderer has no request, so "this site" is what the settings say it is: relative
links, and absolute http(s) links whose host is one of ALLOWED_HOSTS (a leading dot matches subdomains, as in
Django; "*" names no host, so it never makes a link local) with neither a port nor a userinfo part. Every other
link leaves the site through `/out?u=...`. The cost of the simple rule: a link to this site written with its
port (`http://127.0.0.1:8000/...` under `make run`) also passes through the interstitial, which is harmless.

Parsing as a browser does. Python's `urlsplit` and a browser disagree on the tricks that matter, so a URL is
first put in the form a browser reads: tab and newline removed anywhere, C0 controls and spaces trimmed at both
ends, backslashes read as slashes, and runs of slashes after the scheme collapsed. The interstitial then
rebuilds the URL from its parsed parts (host in ASCII, no userinfo, path percent-encoded) and links to that, so
what the page shows is exactly where the browser goes. Hosts are read the way WHATWG URL does: percent-decoded,
mapped with UTS #46 (the `idna` package), and a numeric last label makes the host an IPv4 address
(`http://0x7f.1/` is 127.0.0.1). IDNA 2008 is stricter than browsers: a name it refuses (an emoji domain, a
punycode label that does not decode) is refused, not shown.

Lookalike names. An internationalized host is always shown in punycode (what the browser contacts), beside its
Unicode form for comparison, with a warning when a label mixes scripts (Latin with Cyrillic, say) or when the
name imitates an ASCII name (its skeleton, below). The skeleton folds the letters most used to imitate Latin
ones (a subset of Unicode's confusables.txt: Cyrillic, Greek, Armenian); it catches `аpple.com` and `раураӏ.com`,
not every homoglyph. Accented letters are left alone: a reader can see them, and `bücher.example` is no attack.
"""

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import idna
from django.conf import settings
from django.http.request import validate_host

from apps.core.unicode import unicode_clean

WEB_SCHEMES = ("http", "https")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_TRIMMED = "".join(chr(c) for c in range(0x21))  # C0 controls and space
_SLASHES_AFTER_SCHEME = re.compile(r"^(https?:)/{2,}", re.IGNORECASE)
_LEADING_SLASHES = re.compile(r"^/{2,}")
_FIRST_SEGMENT = re.compile(r"[/?#]")
# Characters WHATWG URL forbids in a host (after percent-decoding), beside C0 controls and space.
_FORBIDDEN_IN_HOST = set("#%/:<>?@[\\]^|") | set(_TRIMMED) | {"\x7f"}
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"

# Letters that imitate Latin ones (the most used of Unicode's confusables.txt), folded to the letter they imitate.
_LOOKALIKES = str.maketrans(
    {
        **dict(zip("аеорсухіјѕԁһӏԛԝьк", "aeopcyxijsdhlqwbk", strict=True)),  # Cyrillic
        **dict(zip("αορνικυχ", "aopvikux", strict=True)),  # Greek
        **dict(zip("օսոհզց", "ounhqg", strict=True)),  # Armenian
        **dict(zip("ıɑɡ", "iag", strict=True)),  # Latin letters that pass for others
    }
)


def _browser_form(url: str) -> str:
    """`url` as a browser reads it before parsing (see the module docstring)."""
    url = url.replace("\t", "").replace("\n", "").replace("\r", "").strip(_TRIMMED).replace("\\", "/")
    return _LEADING_SLASHES.sub("//", _SLASHES_AFTER_SCHEME.sub(r"\1//", url))


def _scheme(url: str) -> str:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def _is_relative(url: str) -> bool:
    """A path, a query or a fragment: no scheme, and not `//host` (which is another host, on this scheme)."""
    return not _scheme(url) and not url.startswith("//")


def link_allowed(url: str) -> bool:
    """Whether a destination may become a link at all: http(s) with a host, mailto, or relative."""
    url = _browser_form(url)
    scheme = _scheme(url)
    if _is_relative(url):
        # RFC 3986 4.2: a colon in the first segment would read as a scheme; here it is one in disguise
        # (`java%09script:`, fullwidth letters), so the destination is no link.
        return ":" not in _FIRST_SEGMENT.split(url, maxsplit=1)[0]
    if scheme == "mailto":
        return True
    if scheme in WEB_SCHEMES or not scheme:  # `//host` has no scheme of its own
        try:
            parts = urlsplit(url)
            return bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:  # an unparseable host or port (an unclosed "[", a port past 65535)
            return False
    return False


def link_host(url: str) -> str:
    """The host a link or image names, for people: ASCII (punycode), lowercase; "" when it has none (a path, or
    mailto)."""
    url = _browser_form(url)
    if _is_relative(url) or _scheme(url) == "mailto":
        return ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def own_hosts() -> list[str]:
    """This site's host names, from ALLOWED_HOSTS; "*" allows any host but names none."""
    return [host for host in settings.ALLOWED_HOSTS if host != "*"]


def link_leaves_site(url: str) -> bool:
    """Whether an allowed link goes to another host, and so through the interstitial (see the module
    docstring). mailto opens the visitor's mail program, not a host, and stays as it is."""
    url = _browser_form(url)
    if _is_relative(url) or _scheme(url) == "mailto":
        return False
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.port is not None:
        return True
    return not validate_host(parts.hostname or "", own_hosts())


# --- the interstitial ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a link really goes, as the interstitial shows it."""

    url: str  # rebuilt from the parsed parts: what "Continue" opens, and what the page shows
    scheme: str
    host: str  # what the browser contacts: ASCII (punycode for an internationalized name), or an IP address
    host_unicode: str = ""  # an internationalized name as it reads; "" when the host is plain ASCII
    userinfo: str = ""  # what the link put before "@" to look like another host
    warnings: list[str] = field(default_factory=list)

    @property
    def host_port(self) -> str:
        return urlsplit(self.url).netloc


class RefusedLink(ValueError):
    """A destination the interstitial will not link to, with the reason fit for the page."""


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 address in WHATWG's spellings (decimal, 0x hex, 0 octal); None when it is not a
    number at all."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
        return int(part[2:] or "0", 16)
    if not re.fullmatch(r"[0-9]+", part):
        return None
    if len(part) > 1 and part.startswith("0"):
        if not re.fullmatch(r"[0-7]+", part):
            raise RefusedLink("The address is not a valid IPv4 address.")
        return int(part, 8)
    return int(part)


def _ipv4(host: str) -> str | None:
    """WHATWG's IPv4 parser: a host whose last label is a number is an IPv4 address, in any of its spellings
    (`0x7f.1`, `2130706433`, `0177.0.0.1`); None when it is a name."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if _ipv4_number(parts[-1]) is None:
        return None
    numbers = [_ipv4_number(part) for part in parts]
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise RefusedLink("The address is not a valid IPv4 address.")
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise RefusedLink("The address is not a valid IPv4 address.")
    value = last + sum(n * 256 ** (3 - i) for i, n in enumerate(head))
    return str(ipaddress.IPv4Address(value))


def _scripts(label: str) -> set[str]:
    """The scripts of a label's letters, by the first word of their Unicode names (LATIN, CYRILLIC, ...)."""
    return {unicodedata.name(c, "UNKNOWN").split(" ")[0] for c in label if c.isalpha()}


def _skeleton(name: str) -> str:
    """The name a Unicode name imitates, with lookalike letters folded. Accents stay: a reader can see them."""
    return name.translate(_LOOKALIKES)


def _host_read(hostname: str) -> tuple[str, str, list[str]]:
    """(ASCII host, Unicode form or "", warnings) for a parsed host name."""
    if ":" in hostname:  # an IPv6 literal (urlsplit removed the brackets)
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]", "", []
        except ValueError:
            raise RefusedLink("The address is not a valid IPv6 address.") from None
    host = unquote(hostname)
    if _FORBIDDEN_IN_HOST & set(host):
        raise RefusedLink("The host name holds characters no host name may hold.")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError:
            raise RefusedLink("The host name is not a valid internationalized domain name.") from None
    host = host.lower()
    address = _ipv4(host)
    if address is not None:
        return address, "", ([] if address == host else [f"The address {host} is the IP address {address}."])
    labels = host.split(".")
    if not any(label.startswith("xn--") for label in labels):
        return host, "", []
    try:
        unicode_host = ".".join(idna.decode(label) if label.startswith("xn--") else label for label in labels)
    except idna.IDNAError:  # stricter than a browser: IDNA 2008 refuses emoji names too
        raise RefusedLink("The host name holds punycode that is not a valid internationalized name.") from None
    warnings = []
    for label in unicode_host.split("."):
        scripts = _scripts(label)
        if len(scripts) > 1:
            warnings.append(f"“{label}” mixes {' and '.join(s.title() for s in sorted(scripts))} letters.")
    skeleton = _skeleton(unicode_host)
    if skeleton != unicode_host and skeleton.isascii():
        warnings.append(f"The name looks like {skeleton}, but it is a different name.")
    return host, unicode_host, warnings


def destination_inspect(raw: str, *, base_scheme: str) -> Destination:
    """Where `raw` (an `/out?u=` value, crafted or not) really goes. A protocol-relative URL takes
    `base_scheme`. Raises RefusedLink for anything but an http(s) URL with a valid host."""
    url = _browser_form(unicode_clean(raw).text)
    if url.startswith("//"):
        url = f"{base_scheme}:{url}"
    scheme = _scheme(url)
    if scheme not in WEB_SCHEMES:
        raise RefusedLink("Only http and https links are followed.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedLink("The address cannot be parsed.") from None
    if not url[len(scheme) + 1 :].startswith("//") or not parts.hostname:
        raise RefusedLink("The address has no host.")
    host, host_unicode, warnings = _host_read(parts.hostname)
    userinfo = unquote(parts.netloc.rpartition("@")[0])
    if userinfo:
        warnings.insert(0, f"The link starts with “{userinfo}@” to look like another address; it goes to {host}.")
    default_port = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else ""
    fragment = f"#{quote(parts.fragment, safe=_QUERY_SAFE)}" if parts.fragment else ""
    return Destination(
        url=f"{scheme}://{netloc}{path}{query}{fragment}",
        scheme=scheme,
        host=host,
        host_unicode=host_unicode,
        userinfo=userinfo,
        warnings=warnings,
    )
