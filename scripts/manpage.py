#!/usr/bin/env python3
"""Man pages for idemproxy, built so they cannot drift from what they describe.

    scripts/manpage.py conf docs/configuration.md > build/man/idemproxy.conf.5
    scripts/manpage.py page docs/idemproxy.8.in   > build/man/idemproxy.8

`conf` turns the configuration reference (Markdown) into idemproxy.conf(5):
every "### `name`" section of the reference becomes ".SS name", so the unit
test that checks the reference against the parser's directive table
(tests/unit/test_docs.c) checks the man page the same way. `page` fills in
a hand-written page. Both take the version and the date from the first entry
of debian/changelog, the one place the version is written (the Makefile
passes the same version to the binary for -v).

Only the Markdown the reference uses is understood: headings, paragraphs,
"- " lists (continued by indented lines), fenced code, tables, `code`,
``code``, **bold**, *emphasis* and [links](...). Anything else is an error,
so a new construct in the reference fails the build instead of rendering as
garbage. Output is plain man(7) without tbl, so `groff -ww -z -man` checks
it; characters outside ASCII become groff's \\[uXXXX].
"""

import email.utils
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANGELOG = os.path.join(ROOT, "debian", "changelog")


class MarkdownError(Exception):
    pass


def changelog_version_and_date(path=CHANGELOG):
    """(version, "YYYY-MM-DD") of the newest entry of a Debian changelog."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    m = re.match(r"^\S+ \(([^)]+)\)", lines[0])
    if not m:
        raise MarkdownError(f"{path}:1: no version in {lines[0]!r}")
    for line in lines[1:]:
        if line.startswith(" -- "):
            stamp = email.utils.parsedate_to_datetime(line.split(">", 1)[1].strip())
            return m.group(1), time.strftime("%Y-%m-%d", stamp.utctimetuple())
    raise MarkdownError(f"{path}: the first entry has no trailer line")


# ---------------------------------------------------------------- roff text

def escape(text):
    """Plain text as roff text: backslashes, non-ASCII characters."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\e")
        elif c == "`":
            out.append("\\(ga")
        elif ord(c) > 126:
            out.append("\\[u%04X]" % ord(c))
        else:
            out.append(c)
    return "".join(out)


LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
CODE = re.compile(r"(``+)(.+?)\1|`([^`]+)`")
BOLD = re.compile(r"\*\*(.+?)\*\*")
EMPH = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")


def inline(text):
    """A run of Markdown text (one paragraph, list item or table cell) as
    roff text: code in bold, **bold** in bold, *emphasis* in italics, a link
    as its text (followed by the address when it leads off the page). Code
    spans are set aside first, so that emphasis may contain them and their
    own '*' and '\\' stay literal."""
    text = LINK.sub(lambda m: m.group(1) + (f" <{m.group(2)}>"
                                            if m.group(2).startswith("http") else ""), text)
    codes = []

    def set_aside(m):
        codes.append(m.group(2).strip() if m.group(1) else m.group(3))
        return f"\0{len(codes) - 1}\0"

    text = escape(CODE.sub(set_aside, text))
    text = BOLD.sub(lambda m: "\\fB" + m.group(1) + "\\fR", text)
    text = EMPH.sub(lambda m: "\\fI" + m.group(1) + "\\fR", text)
    if "*" in text:
        raise MarkdownError(f"a '*' outside code that is not emphasis: {text!r}")
    # Each code span in bold, then back to the font around it; a line may
    # break after a ':' in it (\\: ), for cipher lists longer than a line.
    out, font = [], "R"
    for piece in re.split(r"(\0\d+\0|\\f[BIR])", text):
        if piece.startswith("\0"):
            code = escape(codes[int(piece.strip("\0"))]).replace(":", ":\\:")
            out.append("\\fB" + code + "\\f" + font)
            continue
        if re.fullmatch(r"\\f[BIR]", piece):
            font = piece[2]
        out.append(piece)
    return "".join(out)


def text_line(roff):
    """A roff text line: a leading . or ' would be read as a request."""
    roff = roff.strip()
    return "\\&" + roff if roff[:1] in (".", "'") else roff


def code_line(roff):
    """A line of a no-fill block: leading blanks kept, an empty line as \\&."""
    return "\\&" + roff if roff[:1] in (".", "'", "") else roff


def quoted(arg):
    """A macro argument, quoted."""
    return '"' + arg.replace('"', "\\(dq") + '"'


def split_row(line):
    """The cells of a table row, splitting on | outside code spans."""
    cells, cell, in_code = [], "", False
    for c in line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]:
        if c == "`":
            in_code = not in_code
        if c == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += c
    cells.append(cell.strip())
    return cells


# ---------------------------------------------------------------- blocks

def convert(markdown, source):
    """The body of a man page (from the first "## " heading on, the text
    before it going under DESCRIPTION) from the Markdown reference."""
    lines = markdown.splitlines()
    out = [".SH DESCRIPTION"]
    i = 0
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.append(text_line(inline(" ".join(para))))
            para.clear()

    def where():
        return f"{source}:{i + 1}"

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
        elif line.startswith("```"):
            flush()
            i += 1
            out += [".PP", ".RS 4", ".nf"]
            while i < len(lines) and not lines[i].startswith("```"):
                out.append(code_line(escape(lines[i])))
                i += 1
            if i == len(lines):
                raise MarkdownError(f"{where()}: code block not closed")
            out += [".fi", ".RE"]
            i += 1
        elif line.startswith("#"):
            flush()
            m = re.match(r"^(#+) (.*)$", line)
            if not m or len(m.group(1)) > 4:
                raise MarkdownError(f"{where()}: heading not understood: {line!r}")
            level, title = len(m.group(1)), m.group(2).strip()
            if level == 1:
                pass  # the page's own title is the .TH line
            elif level == 2:
                out.append(".SH " + quoted(inline(title.upper())))
            elif re.fullmatch(r"`[a-z_]+`", title):
                out.append(".SS " + title.strip("`"))
            else:
                out.append(".SS " + quoted(inline(title)))
            i += 1
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            out += table(rows, where())
        elif line.startswith("- "):
            flush()
            item = [line[2:]]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                item.append(lines[i].strip())
                i += 1
            out += [".IP \\(bu 2", text_line(inline(" ".join(item)))]
        elif re.match(r"^(\d+\.|[*+>]) ", stripped) or line.startswith(" "):
            raise MarkdownError(f"{where()}: Markdown that scripts/manpage.py does not "
                                f"handle: {line!r}")
        else:
            para.append(stripped)
            i += 1
    flush()
    return out


def table(rows, where):
    """A Markdown table as tagged paragraphs (no tbl): the first cell is the
    tag; with two columns the second is the text, with more each further
    cell is a line "header: cell"."""
    if len(rows) < 2 or not all(re.fullmatch(r":?-+:?", c) for c in rows[1]):
        raise MarkdownError(f"{where}: a table without a header separator")
    header, body = rows[0], rows[2:]
    out = [".PP"]
    for row in body:
        if len(row) != len(header):
            raise MarkdownError(f"{where}: a row of {len(row)} cells in a table of "
                                f"{len(header)} columns: {row}")
        out += [".TP", text_line(inline(row[0]))]
        if len(row) == 2:
            out.append(text_line(inline(row[1])))
        else:
            for k, cell in enumerate(row[1:], 1):
                if k > 1:
                    out.append(".br")
                out.append(text_line(f"\\fI{escape(header[k])}\\fR: " + inline(cell)))
    return out


# ---------------------------------------------------------------- pages

CONF_HEADER = """\
.TH IDEMPROXY.CONF 5 "{date}" "idemproxy {version}" "File Formats"
.\\" Generated by scripts/manpage.py from docs/configuration.md: edit that file.
.\\" Ragged right: long option values (cipher lists) leave lines that justified
.\\" text could not fill; no hyphenation of directive names and values.
.ad l
.nh
.SH NAME
idemproxy.conf \\- configuration file of the idemproxy idempotency proxy
.SH SYNOPSIS
.B /etc/idemproxy/idemproxy.conf
"""

CONF_FOOTER = """\
.SH FILES
.TP
.I /etc/idemproxy/idemproxy.conf
The configuration file read by default; the package installs a commented sample that shows
every directive at its default.
.TP
.I /usr/share/doc/idemproxy/
The reference this page is made from (configuration.md), operations.md, recipes.md and
design.md.
.SH SEE ALSO
.BR idemproxy (8),
.BR redis\\-server (1),
.BR systemd.service (5),
.BR logrotate (8)
"""


def conf_page(md_path):
    version, date = changelog_version_and_date()
    with open(md_path, encoding="utf-8") as f:
        body = convert(f.read(), md_path)
    return CONF_HEADER.format(version=version, date=date) + "\n".join(body) + "\n" + CONF_FOOTER


def filled_page(in_path):
    version, date = changelog_version_and_date()
    with open(in_path, encoding="utf-8") as f:
        text = f.read()
    for name, value in (("@VERSION@", version), ("@DATE@", date)):
        if name not in text:
            raise MarkdownError(f"{in_path}: no {name} to fill in")
        text = text.replace(name, value)
    return text


def main(argv):
    if len(argv) != 3 or argv[1] not in ("conf", "page"):
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    try:
        text = conf_page(argv[2]) if argv[1] == "conf" else filled_page(argv[2])
    except (MarkdownError, OSError, ValueError) as e:
        sys.stderr.write(f"manpage.py: {e}\n")
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
