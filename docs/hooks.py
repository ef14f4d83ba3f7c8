"""MkDocs hook: fills the generated reference sections from the code at build time.

Pages hold placeholders; ``on_page_markdown`` replaces them, so nothing generated is committed
and the published reference cannot drift from the installed code:

- ``<!-- medxfer:cli-reference -->``: every subcommand of ``medxfer`` (usage, description,
  arguments with their defaults, choices and help), from the argparse parser
  ``medxfer.pipeline.cli.parser.build_parser()``;
- ``<!-- medxfer:config-reference -->``: every configuration key, from
  ``medxfer.pipeline.runs.config.reference_markdown()``;
- ``<!-- medxfer:preset-table -->``: the augmentation presets, from
  ``medxfer.transforms.presets.preset_table()``.

A placeholder whose source is missing stops the build with a message saying what is missing.
"""

from __future__ import annotations

import argparse
import html
import re

from mkdocs.exceptions import PluginError

CLI = "<!-- medxfer:cli-reference -->"
CONFIG = "<!-- medxfer:config-reference -->"
PRESETS = "<!-- medxfer:preset-table -->"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return "`" + str(text).replace("|", "\\|") + "`" if text != "" else ""


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
        return ""
    if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
        return ""
    return _code(action.default)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    raise PluginError("docs/hooks.py: the medxfer parser has no subcommands")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def cli_reference() -> str:
    try:
        from medxfer.pipeline.cli.parser import build_parser
    except ImportError as error:  # pragma: no cover - reported to whoever builds the docs
        raise PluginError(f"docs/hooks.py: cannot import medxfer.pipeline.cli.parser.build_parser ({error}); "
                          "install medxfer in this environment (make install)") from error
    parser = build_parser()
    parser.prog = "medxfer"
    out = [
        "Generated from `medxfer.pipeline.cli.parser.build_parser()` when this site was built.",
        "",
        "```text",
        _usage(parser),
        "```",
    ]
    for name, summary, sub in _subcommands(parser):
        out += ["", f"### `medxfer {name}`", ""]
        if summary:
            out += [summary[:1].upper() + summary[1:] + ".", ""]
        out += ["```text", _usage(sub), "```", ""]
        if sub.description:
            out += [" ".join(sub.description.split()), ""]
        rows = []
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                names = ", ".join(_code(o) for o in action.option_strings)
                if action.nargs != 0:
                    metavar = action.metavar or (action.dest.upper() if not action.choices else None)
                    if metavar:
                        names += " " + _code(metavar)
            else:
                names = _code(action.metavar or action.dest)
            choices = ", ".join(_code(c) for c in action.choices) if action.choices else ""
            required = "yes" if (action.required and action.option_strings) or not action.option_strings else ""
            help_text = "" if action.help in (None, argparse.SUPPRESS) else action.help % {"default": action.default}
            rows.append(f"| {names} | {required} | {_default(action)} | {choices} | {_cell(help_text)} |")
        if rows:
            out += ["| argument | required | default | choices | help |", "| --- | --- | --- | --- | --- |", *rows]
    return "\n".join(out)


def config_reference() -> str:
    try:
        from medxfer.pipeline.runs import config
    except ImportError as error:  # pragma: no cover
        raise PluginError(f"docs/hooks.py: cannot import medxfer.pipeline.runs.config ({error})") from error
    generate = getattr(config, "reference_markdown", None)
    if generate is None:
        raise PluginError(
            "docs/hooks.py: medxfer.pipeline.runs.config.reference_markdown() does not exist, so the "
            "configuration reference (docs/reference/configuration.md) cannot be generated. It must return "
            "a Markdown string listing every configuration key with its type or range, default and "
            "description; the table is generated from the code and never written by hand."
        )
    text = generate()
    if not isinstance(text, str) or not text.strip():
        raise PluginError("docs/hooks.py: reference_markdown() returned no Markdown")
    # Under the page's own title: every heading of the generated text goes one level down.
    return re.sub(r"^(#+) ", r"#\1 ", text.strip(), flags=re.MULTILINE)


def preset_reference() -> str:
    from medxfer.transforms.presets import preset_table

    return preset_table()


GENERATORS = {CLI: cli_reference, CONFIG: config_reference, PRESETS: preset_reference}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for placeholder, generate in GENERATORS.items():
        if placeholder in markdown:
            markdown = markdown.replace(placeholder, generate())
    leftover = re.findall(r"<!-- medxfer:[a-z-]+ -->", markdown)
    if leftover:
        raise PluginError(f"docs/hooks.py: unknown placeholder(s) {', '.join(map(html.escape, leftover))} "
                          f"in {page.file.src_uri}")
    return markdown
