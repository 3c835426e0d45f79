"""Form posts on a site that sends no referrer.

With `Referrer-Policy: no-referrer`, a browser sends `Origin: null` on every form POST, same-origin ones
included (Fetch standard, "append a request `Origin` header"), and Django's CSRF check refuses a null origin:
every form on the site would fail. The same browser also sends `Sec-Fetch-Site: same-origin`, a header no page
script can set (the `Sec-` prefix is forbidden to scripts), so such a request's origin is this site's; this
middleware restores it, just before Django's unchanged CsrfViewMiddleware. The token is still required, and a
null origin from anywhere else (a cross-site form, a sandboxed frame: `Sec-Fetch-Site: cross-site`) is still
refused.

The cost: a browser without Fetch Metadata (Safari before 16.4, 2023) cannot post forms here.
"""

from django.utils.deprecation import MiddlewareMixin


class SameOriginNullOriginMiddleware(MiddlewareMixin):
    def process_request(self, request) -> None:
        meta = request.META
        if meta.get("HTTP_ORIGIN") == "null" and meta.get("HTTP_SEC_FETCH_SITE") == "same-origin":
            meta["HTTP_ORIGIN"] = f"{request.scheme}://{request.get_host()}"
