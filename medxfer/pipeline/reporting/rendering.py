"""The Jinja2 environment of ``report.html`` and ``model_card.md`` (templates in ``templates/``).

HTML templates (``*.html.j2``) are autoescaped, because group names, class names and the
configuration are user data; the Markdown card is not (HTML escaping would show "&amp;" in its
text): its values are made inert by ``md``, applied in the template where user text appears.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

_MARKDOWN_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md(text: Any) -> str:
    """User text made inert in Markdown: no emphasis, link, table cell break or HTML tag."""
    return str(text).translate(_MARKDOWN_SPECIAL)


TEMPLATES = Environment(
    loader=PackageLoader("medxfer.pipeline.reporting", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",), default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters["md"] = md


def render(template: str, context: dict[str, Any]) -> str:
    """The text of ``template`` (a file name in ``templates/``) filled with ``context``."""
    return TEMPLATES.get_template(template).render(context)
