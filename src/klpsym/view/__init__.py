"""Views of a module: what ``klpsym inspect`` shows (header, sections,
symbols, relocations, strings, .modinfo, exports, symbol versions, the
livepatch parts checked against the loader's rules, the signature), as
plain data.  Above :mod:`klpsym.klp`, whose names and loader rules the klp
view uses; nothing below imports it."""
