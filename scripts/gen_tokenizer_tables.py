#!/usr/bin/env python3
"""Generates the Unicode tables of src/tokenizer.c from Python's unicodedata.
Prints C source; it replaces the lines between the 'generated tables' markers."""
import sys
import unicodedata as u

HI = 0x110000


def ranges(pred):
    out, start = [], None
    for c in range(HI):
        p = pred(c)
        if p and start is None:
            start = c
        if not p and start is not None:
            out.append((start, c - 1))
            start = None
    if start is not None:
        out.append((start, HI - 1))
    return out


def pack(items, width=98):
    """Prints C initialiser items, as many per line as fit in width."""
    line = " "
    for it in items:
        if len(line) + 1 + len(it) > width:
            print(line)
            line = " "
        line += " " + it
    if line.strip():
        print(line)


def cat(c):
    return u.category(chr(c))


def emit_ranges(name, rs, comment):
    print(f"/* {comment} ({len(rs)} ranges) */")
    print(f"static const uint32_t {name}[][2] = {{")
    pack([f"{{0x{a:X},0x{b:X}}}," for a, b in rs])
    print("};")
    print()


def lower_runs():
    """Simple lowercase mappings as runs (first, last, delta, stride): every stride-th code point
    from first to last maps to itself + delta."""
    pairs = []
    for c in range(HI):
        lo = chr(c).lower()
        if len(lo) == 1 and ord(lo) != c:
            pairs.append((c, ord(lo) - c))
    runs = []
    for c, d in pairs:
        if runs:
            r = runs[-1]
            if r[2] == d and r[3] == 0 and c - r[1] in (1, 2):
                r[3] = c - r[1]
                r[1] = c
                continue
            if r[2] == d and r[3] and c - r[1] == r[3]:
                r[1] = c
                continue
        runs.append([c, c, d, 0])
    for r in runs:
        if r[3] == 0:
            r[3] = 1
    return runs


def strip_base(c):
    s = u.normalize("NFD", chr(c))
    return "".join(x for x in s if u.category(x) != "Mn")


def decompositions(width):
    """BMP code points whose NFD, with combining marks (Mn) removed, is `width` other BMP code
    points. Hangul syllables are decomposed algorithmically and are left out."""
    out = []
    for c in range(0x10000):
        if 0xAC00 <= c <= 0xD7A3 or cat(c) == "Mn":
            continue
        b = strip_base(c)
        if b != chr(c) and len(b) == width and all(ord(x) < 0x10000 for x in b):
            out.append((c,) + tuple(ord(x) for x in b))
    return out


print(f"/* ---- generated tables (Python {sys.version_info.major}.{sys.version_info.minor}, unicodedata {u.unidata_version}); each comment "
      f"gives the rule ---- */")
emit_ranges("k_mark", ranges(lambda c: cat(c) == "Mn"),
            "General category Mn (nonspacing marks): dropped when accents are stripped")
emit_ranges("k_punct", ranges(lambda c: cat(c).startswith("P")),
            "General category P* (punctuation); ASCII symbols are added in code as BERT does")
emit_ranges("k_control", ranges(lambda c: cat(c) in ("Cc", "Cf", "Co") and chr(c) not in "\t\n\r"),
            "Categories Cc, Cf, Co except tab, newline, carriage return: dropped")
emit_ranges("k_space", ranges(lambda c: cat(c) in ("Zs", "Zl", "Zp") or chr(c) in "\t\n\r"),
            "Tab, newline, carriage return and categories Zs, Zl, Zp: separate words")
runs = lower_runs()
print(f"/* Simple lowercase mappings ({len(runs)} runs): every stride-th code point in [first, last]\n"
      f" * maps to itself + delta: {{first, last, delta, stride}} */")
print("static const int32_t k_lower[][4] = {")
pack([f"{{0x{a:X},0x{b:X},{d},{s}}}," for a, b, d, s in runs])
print("};")
print()
dec = decompositions(1)
print(f"/* BMP code points whose NFD minus marks Mn is one other code point ({len(dec)}):\n"
      f" * {{code point, base}} */")
print("static const uint16_t k_decomp1[][2] = {")
pack([f"{{0x{a:X},0x{b:X}}}," for a, b in dec])
print("};")
print()
dec = decompositions(2)
print(f"/* BMP code points whose NFD minus marks Mn is two code points ({len(dec)}) */")
print("static const uint16_t k_decomp2[][3] = {")
pack([f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in dec])
print("};")
print("/* ---- end of generated tables ---- */")
