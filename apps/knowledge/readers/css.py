"""The page's own stylesheet, applied to its elements: the properties that can hide text, resolved per element.

A hidden-text filter that reads only inline `style` attributes misses `<style>.note{display:none}</style>`,
so the HTML reader asks this cascade instead. It is a small one, enough for hiding rules:
- sources: every `<style>` element in document order (`@media` blocks included unless print-only,
  `@supports` included), presentational attributes (`<font color>`, `<body text>`, `bgcolor`) below every rule, and the
  `style` attribute above every rule;
- order: `!important` first, then the style attribute, then selector specificity, then the later rule;
- selectors: cssselect translates each one to XPath, evaluated with lxml. Selectors it cannot translate
  (`:hover`, `::before`) match nothing: they describe states or generated boxes, not the text at rest;
- properties: only those that can hide text (`HIDING_PROPERTIES`). Rules with none of them are skipped
  before any selector is evaluated, which keeps a large framework stylesheet cheap.
Inheritance (color, font-size, visibility) is the HTML reader's job: it walks the tree anyway.
Linked stylesheets (`<link rel=stylesheet>`) are not fetched: nothing leaves the server at ingestion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cssselect
import tinycss2
from cssselect.parser import Class, CombinedSelector, Element, Hash
from lxml import html

HIDING_PROPERTIES = frozenset(
    {
        "display",
        "visibility",
        "opacity",
        "font-size",
        "font",
        "color",
        "background",
        "background-color",
        "background-image",
        "position",
        "left",
        "top",
        "right",
        "text-indent",
    }
)
_TRANSLATOR = cssselect.HTMLTranslator()


@dataclass(frozen=True)
class Declared:
    """A property's winning value on one element: tinycss2 component values (whitespace dropped), and where
    it came from, for the audit ("inline style", "style rule .note")."""

    value: list
    source: str

    @property
    def css(self) -> str:
        return tinycss2.serialize(self.value).strip()


Cascade = dict[html.HtmlElement, dict[str, Declared]]


def css_cascade(root: html.HtmlElement) -> Cascade:
    """For each element that any source styles, the winning declaration of each hiding property."""
    winners: dict[html.HtmlElement, dict[str, tuple[tuple, Declared]]] = {}

    def declare(element, declarations, *, source: str, specificity: tuple, order: int, inline: bool) -> None:
        props = winners.setdefault(element, {})
        for declaration in declarations:
            key = (declaration.important, inline, specificity, order)
            current = props.get(declaration.lower_name)
            if current is None or key >= current[0]:
                value = [token for token in declaration.value if token.type not in ("whitespace", "comment")]
                props[declaration.lower_name] = (key, Declared(value, source))

    for element in root.xpath("//font[@color] | //body[@text]"):
        color = element.get("color") or element.get("text")
        declare(element, _declarations(f"color: {color}"), **_PRESENTATIONAL)
    for element in root.xpath("//*[@bgcolor]"):
        declare(element, _declarations(f"background-color: {element.get('bgcolor')}"), **_PRESENTATIONAL)

    present = _Present(root)
    order = 0
    for style in root.iter("style"):
        for rule in _style_rules(tinycss2.parse_stylesheet(style.text or "", skip_comments=True, skip_whitespace=True)):
            declarations = _declarations(rule.content)
            if not declarations:
                continue
            order += 1
            selector_text = tinycss2.serialize(rule.prelude).strip()
            try:
                selectors = cssselect.parse(selector_text)
            except cssselect.SelectorError:
                continue
            for selector in selectors:
                if selector.pseudo_element or not present.may_match(selector):
                    continue
                try:
                    xpath = _TRANSLATOR.selector_to_xpath(selector)
                except cssselect.SelectorError:
                    continue
                for element in root.xpath(xpath):
                    declare(
                        element,
                        declarations,
                        source=f"style rule {selector_text}",
                        specificity=selector.specificity(),
                        order=order,
                        inline=False,
                    )

    for element in root.xpath("//*[@style]"):
        declare(
            element,
            _declarations(element.get("style")),
            source="inline style",
            specificity=(0, 0, 0),
            order=0,
            inline=True,
        )
    return {element: {name: declared for name, (_, declared) in props.items()} for element, props in winners.items()}


class _Present:
    """The tags, classes and ids a document uses. A selector whose rightmost part needs one it lacks cannot
    match, and is skipped without running its XPath: browsers hash rules the same way. A framework stylesheet
    of thousands of rules costs seconds otherwise."""

    def __init__(self, root: html.HtmlElement) -> None:
        self.tags = {element.tag for element in root.iter() if isinstance(element.tag, str)}
        self.classes = {name for value in root.xpath("//@class") for name in value.split()}
        self.ids = set(root.xpath("//@id"))

    def may_match(self, selector: cssselect.Selector) -> bool:
        node = selector.parsed_tree
        if isinstance(node, CombinedSelector):
            node = node.subselector
        while node is not None:
            if isinstance(node, Class) and node.class_name not in self.classes:
                return False
            if isinstance(node, Hash) and node.id not in self.ids:
                return False
            if isinstance(node, Element):
                return node.element is None or node.element.lower() in self.tags
            node = getattr(node, "selector", None)
        return True


_PRESENTATIONAL = {"source": "presentational attribute", "specificity": (-1, 0, 0), "order": 0, "inline": False}


def _declarations(content) -> list:
    return [
        node
        for node in tinycss2.parse_blocks_contents(content or [], skip_comments=True, skip_whitespace=True)
        if node.type == "declaration" and node.lower_name in HIDING_PROPERTIES
    ]


def _style_rules(nodes) -> list:
    """Qualified rules, with those inside @media (unless print-only) and @supports flattened in order."""
    rules = []
    for node in nodes:
        if node.type == "qualified-rule":
            rules.append(node)
        elif node.type == "at-rule" and node.content is not None:
            if node.lower_at_keyword == "media":
                media = tinycss2.serialize(node.prelude).lower()
                if "print" in media and "screen" not in media and "all" not in media:
                    continue
            elif node.lower_at_keyword != "supports":
                continue
            nested = tinycss2.parse_stylesheet(node.content, skip_comments=True, skip_whitespace=True)
            rules.extend(_style_rules(nested))
    return rules
