/*
 * klpsym.load._cfacts -- the check's module reader, compiled.
 *
 * The same reading as klpsym/load/facts.py's _Reader (the pure-Python fast
 * path), rule for rule, written in C because reading a distribution's 4,000
 * modules is what `klpsym check` of a whole kernel spends its time on: the
 * Python reader costs ~130 us a module, this one ~15 us (benchmarks/check_all.py).
 *
 * scan(data, handled) and scan_path(path, handled) return a tuple of the
 * facts (see facts.py:_from_compiled for its fields) for the common module:
 * 64-bit little-endian ELF, ET_REL, one symbol table, no livepatch content,
 * known relocation types.  For anything else -- or anything the general
 * reader would refuse -- they return None and facts.py reads the module the
 * Python way, so messages and unusual layouts are the Python readers' by
 * construction.  scan_path() also returns None when the file cannot be
 * read, is not a regular file, or is not an uncompressed ELF file.
 *
 * Every offset and size read from the file is checked against the buffer
 * before use; arithmetic on file values is done so that it cannot wrap.
 * tests/unit/test_check.py and tests/real compare this reader with both
 * Python readers on every module of three Debian kernels and on corrupted
 * copies; the fuzzer (tests/unit/fuzz) feeds it mutated modules through check.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ELF constants (include/uapi/linux/elf.h) */
#define ET_REL 1
#define EM_X86_64 62
#define SHT_NULL 0
#define SHT_PROGBITS 1
#define SHT_SYMTAB 2
#define SHT_STRTAB 3
#define SHT_RELA 4
#define SHT_NOBITS 8
#define SHT_SYMTAB_SHNDX 18
#define SHF_ALLOC 0x2ULL
#define SHF_RELA_LIVEPATCH 0x00100000ULL
#define SHN_LORESERVE 0xff00
#define SHN_LIVEPATCH 0xff20
#define SHN_COMMON 0xfff2
#define SHN_XINDEX 0xffff
#define STB_WEAK 2
#define R_X86_64_64 1
#define R_X86_64_PC32 2

/* include/linux/module.h: the name in struct module (see facts.py) */
#define THIS_MODULE_NAME_OFFSET 24
#define MODULE_NAME_LEN 56
/* include/linux/module_symbol.h (v6.x __kflagstab) */
#define KSYM_FLAG_GPL_ONLY 1

static const char SIG_STRING[] = "~Module signature appended~\n";
#define SIG_STRING_LEN (sizeof(SIG_STRING) - 1)

/* Versions formats, as facts.py maps them to module.versions.VersionsFormat */
enum { VERSIONS_NONE = 0, VERSIONS_BASIC = 1, VERSIONS_EXTENDED = 2 };

/* The sections read by name: module.exports.KSYMTAB_SECTIONS (GPL-only or
 * not), their CRC tables, and the others facts.py's _WANTED_NAMES lists.
 * The module attribute KSYMTABS exposes the first table so that a test can
 * hold it equal to the Python one. */
enum {
    W_MODINFO, W_THIS_MODULE, W_VERSIONS, W_VERSION_EXT_CRCS, W_VERSION_EXT_NAMES,
    W_KSYMTAB_STRINGS, W_KFLAGSTAB,
    W_KSYMTAB0,             /* N_KSYMTAB tables */
    W_KCRCTAB0 = W_KSYMTAB0 + 5,
    W_COUNT = W_KCRCTAB0 + 5,
};
#define N_KSYMTAB 5
static const struct { const char *name; int gpl_only; } KSYMTAB[N_KSYMTAB] = {
    {"__ksymtab", 0},
    {"__ksymtab_gpl", 1},
    {"__ksymtab_unused", 0},
    {"__ksymtab_unused_gpl", 1},
    {"__ksymtab_gpl_future", 0},
};
static const char *const KCRCTAB[N_KSYMTAB] = {
    "__kcrctab", "__kcrctab_gpl", "__kcrctab_unused", "__kcrctab_unused_gpl",
    "__kcrctab_gpl_future",
};
static const char *const WANTED_OTHER[W_KSYMTAB0] = {
    ".modinfo", ".gnu.linkonce.this_module", "__versions", "__version_ext_crcs",
    "__version_ext_names", "__ksymtab_strings", "__kflagstab",
};

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

typedef struct {
    uint32_t name, type, link, info;
    uint64_t flags, offset, size, align, entsize;
    int wanted; /* W_* of its name, or -1 */
} Shdr;

typedef struct {
    const uint8_t *data;
    uint64_t size; /* the ELF part: without an appended signature */
    int signed_;
    unsigned shnum;
    Shdr *sh;
    const uint8_t *shstr;
    uint64_t shstr_len;
    int first[W_COUNT]; /* first section of each wanted name, or -1 */
    uint16_t machine;
    /* the symbol table, once read */
    const uint8_t *syms;
    uint64_t nsyms;
} Reader;

/* A section's bytes: empty for SHT_NOBITS and SHT_NULL (facts.py content()).
 * Every other section was checked to lie inside the ELF part. */
static inline const uint8_t *content(const Reader *r, unsigned i, uint64_t *len)
{
    const Shdr *s = &r->sh[i];
    if (s->type == SHT_NOBITS || s->type == SHT_NULL) {
        *len = 0;
        return r->data;
    }
    *len = s->size;
    return r->data + s->offset;
}

static int wanted_id(const char *name)
{
    if (name[0] == '.') {
        for (int w = 0; w < 2; w++)
            if (strcmp(name, WANTED_OTHER[w]) == 0)
                return w;
        return -1;
    }
    if (name[0] != '_' || name[1] != '_')
        return -1;
    for (int w = 2; w < W_KSYMTAB0; w++)
        if (strcmp(name, WANTED_OTHER[w]) == 0)
            return w;
    for (int k = 0; k < N_KSYMTAB; k++) {
        if (strcmp(name, KSYMTAB[k].name) == 0)
            return W_KSYMTAB0 + k;
        if (strcmp(name, KCRCTAB[k]) == 0)
            return W_KCRCTAB0 + k;
    }
    return -1;
}

/* facts.py _Reader.__init__: 0 when read, -1 when unusual. */
static int reader_init(Reader *r, const uint8_t *data, uint64_t size)
{
    r->data = data;
    r->sh = NULL;
    r->syms = NULL;
    r->nsyms = 0;
    r->signed_ = size >= SIG_STRING_LEN &&
                 memcmp(data + size - SIG_STRING_LEN, SIG_STRING, SIG_STRING_LEN) == 0;
    if (r->signed_) { /* module.signature.split_signature */
        uint64_t end = size - SIG_STRING_LEN;
        uint64_t sig_len = end >= 12 ? ((uint64_t)data[end - 4] << 24 |
                                        (uint64_t)data[end - 3] << 16 |
                                        (uint64_t)data[end - 2] << 8 | data[end - 1])
                                     : 0;
        if (sig_len == 0 || end < 12 || end - 12 < sig_len)
            return -1;
        size = end - 12 - sig_len;
    }
    r->size = size;
    if (size < 64 || memcmp(data, "\x7f" "ELF\x02\x01", 6) != 0)
        return -1;
    uint16_t etype = rd16(data + 16);
    r->machine = rd16(data + 18);
    uint64_t shoff = rd64(data + 40);
    uint16_t phnum = rd16(data + 56), shentsize = rd16(data + 58), shnum = rd16(data + 60),
             shstrndx = rd16(data + 62);
    if (etype != ET_REL || phnum != 0 || shoff == 0 || shentsize != 64 || shnum == 0 ||
        shoff > size || (uint64_t)shnum * 64 > size - shoff || !(0 < shstrndx && shstrndx < shnum))
        return -1;
    r->shnum = shnum;
    r->sh = PyMem_Malloc(sizeof(Shdr) * shnum);
    if (r->sh == NULL)
        return -2;
    int symtabs = 0;
    uint64_t rela_bytes = 0;
    for (unsigned i = 0; i < shnum; i++) {
        const uint8_t *p = data + shoff + 64 * (uint64_t)i;
        Shdr *s = &r->sh[i];
        s->name = rd32(p);
        s->type = rd32(p + 4);
        s->flags = rd64(p + 8);
        s->offset = rd64(p + 24);
        s->size = rd64(p + 32);
        s->link = rd32(p + 40);
        s->info = rd32(p + 44);
        s->align = rd64(p + 48);
        s->entsize = rd64(p + 56);
        s->wanted = -1;
        if (i > 0 && ((s->align & (s->align - 1)) != 0 || s->type == SHT_NULL))
            return -1;
        if (s->type == SHT_SYMTAB_SHNDX)
            return -1;
        if (s->type == SHT_SYMTAB && ++symtabs > 1)
            return -1;
        if (s->type != SHT_NOBITS && s->type != SHT_NULL &&
            (s->offset > size || s->size > size - s->offset))
            return -1;
        /* relocation tables that overlap (more of them than the file holds)
         * would be read over and over: not a linked module */
        if (s->type == SHT_RELA && (rela_bytes += s->size) > size)
            return -1;
    }
    r->shstr = content(r, shstrndx, &r->shstr_len);
    if (r->shstr_len == 0 || r->shstr[r->shstr_len - 1] != 0)
        return -1;
    for (int w = 0; w < W_COUNT; w++)
        r->first[w] = -1;
    for (unsigned i = 1; i < shnum; i++) {
        Shdr *s = &r->sh[i];
        if (s->name >= r->shstr_len)
            return -1;
        /* NUL-terminated: the table ends with one */
        s->wanted = wanted_id((const char *)r->shstr + s->name);
        if (s->wanted >= 0 && r->first[s->wanted] < 0)
            r->first[s->wanted] = (int)i;
    }
    return 0;
}

/* A str from UTF-8 bytes with the given error handler. */
static inline PyObject *str_of(const uint8_t *p, uint64_t n, const char *errors)
{
    return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, errors);
}

/* Symbol names, shared: the same few thousand names come back in module
 * after module (_printk, __fentry__, ...).  One str object per ASCII name,
 * kept for the process's life, is cheaper to hand out than a new one, and
 * its hash, once computed, serves every dict lookup of the check.  The
 * table stops growing at NAMES_MAX entries (a fuzzer's random names). */
#define NAMES_MAX (1 << 18)
static PyObject **names;
static size_t names_cap, names_used;

static PyObject *name_of(const uint8_t *p, uint64_t n, const char *errors)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    uint8_t high = 0;
    for (uint64_t k = 0; k < n; k++) {
        high |= p[k];
        h = (h ^ p[k]) * 0x100000001b3ULL;
    }
    if (high & 0x80 || n > 1024)
        return str_of(p, n, errors); /* not ASCII (or absurd): not shared */
    if (names_used * 2 >= names_cap) {
        if (names_used >= NAMES_MAX)
            return str_of(p, n, errors);
        size_t cap = names_cap ? names_cap * 2 : 4096;
        PyObject **grown = PyMem_Calloc(cap, sizeof(PyObject *));
        if (grown == NULL)
            return PyErr_NoMemory();
        for (size_t k = 0; k < names_cap; k++) {
            PyObject *s = names[k];
            if (s == NULL)
                continue;
            const uint8_t *d = PyUnicode_DATA(s);
            uint64_t g = 0xcbf29ce484222325ULL;
            for (Py_ssize_t j = 0; j < PyUnicode_GET_LENGTH(s); j++)
                g = (g ^ d[j]) * 0x100000001b3ULL;
            size_t slot = (size_t)g & (cap - 1);
            while (grown[slot] != NULL)
                slot = (slot + 1) & (cap - 1);
            grown[slot] = s;
        }
        PyMem_Free(names);
        names = grown;
        names_cap = cap;
    }
    size_t slot = (size_t)h & (names_cap - 1);
    for (PyObject *s; (s = names[slot]) != NULL; slot = (slot + 1) & (names_cap - 1)) {
        /* ASCII strs are compact: one byte a character at PyUnicode_DATA */
        if ((uint64_t)PyUnicode_GET_LENGTH(s) == n && memcmp(PyUnicode_DATA(s), p, n) == 0)
            return Py_NewRef(s);
    }
    PyObject *s = PyUnicode_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (s == NULL)
        return NULL;
    names[slot] = Py_NewRef(s);
    names_used++;
    return s;
}

/* ---- .modinfo (facts.py _Reader._modinfo): "key=value" entries, each after
 * a NUL; the section is read as if a NUL came before it. */

/* Position just after the first "key=" that starts the text or follows a NUL,
 * searching entries that start at or after `from`; -1 when none. */
static int64_t modinfo_find(const uint8_t *text, uint64_t len, const char *key, uint64_t from)
{
    size_t klen = strlen(key);
    uint64_t pos = from;
    while (pos < len) {
        /* an entry starts at pos when pos == 0 or text[pos - 1] == NUL */
        if ((pos == 0 || text[pos - 1] == 0) && len - pos >= klen + 1 &&
            memcmp(text + pos, key, klen) == 0 && text[pos + klen] == '=')
            return (int64_t)(pos + klen + 1);
        const uint8_t *nul = memchr(text + pos, 0, len - pos);
        if (nul == NULL)
            return -1;
        pos = (uint64_t)(nul - text) + 1;
    }
    return -1;
}

static PyObject *modinfo_value(const uint8_t *text, uint64_t len, uint64_t start)
{
    const uint8_t *nul = memchr(text + start, 0, len - start);
    uint64_t end = nul ? (uint64_t)(nul - text) : len;
    return str_of(text + start, end - start, "replace");
}

/* The first value of key, or None. */
static PyObject *modinfo_get(const uint8_t *text, uint64_t len, const char *key)
{
    int64_t at = modinfo_find(text, len, key, 0);
    if (at < 0)
        Py_RETURN_NONE;
    return modinfo_value(text, len, (uint64_t)at);
}

/* ---- symbol versions (facts.py _Reader._versions) ---- */

/* versions[name] = crc (a later entry of a name wins, as in a dict); -2 on
 * memory errors. */
static int set_version(PyObject *versions, const uint8_t *name, uint64_t len, uint32_t crc)
{
    PyObject *key = name_of(name, len, "replace");
    PyObject *value = key ? PyLong_FromUnsignedLong(crc) : NULL;
    int bad = value == NULL || PyDict_SetItem(versions, key, value) < 0;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return bad ? -2 : 0;
}

static int read_versions(const Reader *r, int *format, PyObject **out)
{
    *format = VERSIONS_NONE;
    PyObject *versions = PyDict_New();
    if (versions == NULL)
        return -2;
    *out = versions;
    int crcs = r->first[W_VERSION_EXT_CRCS], names = r->first[W_VERSION_EXT_NAMES];
    if (crcs >= 0 || names >= 0) { /* 6.14+: extended versions */
        if (crcs < 0 || names < 0 || r->sh[crcs].size % 4 ||
            r->sh[crcs].type != SHT_PROGBITS || r->sh[names].type != SHT_PROGBITS)
            return -1;
        uint64_t clen, nlen;
        const uint8_t *c = content(r, (unsigned)crcs, &clen), *n = content(r, (unsigned)names, &nlen);
        uint64_t count = clen / 4, nuls = 0;
        for (const uint8_t *p = n; nuls < count && (p = memchr(p, 0, nlen - (uint64_t)(p - n)));
             p++)
            nuls++;
        if (nuls < count)
            return -1;
        const uint8_t *p = n;
        for (uint64_t k = 0; k < count; k++) {
            const uint8_t *nul = memchr(p, 0, nlen - (uint64_t)(p - n));
            if (set_version(versions, p, (uint64_t)(nul - p), rd32(c + 4 * k)) < 0)
                return -2;
            p = nul + 1;
        }
        *format = VERSIONS_EXTENDED;
        return 0;
    }
    int vi = r->first[W_VERSIONS];
    if (vi < 0)
        return 0;
    uint64_t len;
    const uint8_t *v = content(r, (unsigned)vi, &len);
    if (r->sh[vi].type != SHT_PROGBITS || len % 64)
        return -1;
    /* struct modversion_info { unsigned long crc; char name[MODULE_NAME_LEN]; };
     * the name without its trailing NULs (as numpy's S56 gives it) */
    for (uint64_t k = 0; k < len; k += 64) {
        uint64_t nlen = MODULE_NAME_LEN;
        while (nlen > 0 && v[k + 8 + nlen - 1] == 0)
            nlen--;
        if (set_version(versions, v + k + 8, nlen, rd32(v + k)) < 0)
            return -2;
    }
    *format = VERSIONS_BASIC;
    return 0;
}

/* ---- the symbol table (facts.py _Reader._symtab, _undefined) ---- */
static int read_symtab(Reader *r, const uint8_t **strtab, uint64_t *strtab_len)
{
    unsigned i = 0;
    while (r->sh[i].type != SHT_SYMTAB)
        i++; /* the caller saw one */
    const Shdr *s = &r->sh[i];
    if ((s->entsize != 0 && s->entsize != 24) || s->size % 24 || !(0 < s->link && s->link < r->shnum) ||
        r->sh[s->link].type != SHT_STRTAB)
        return -1;
    *strtab = content(r, s->link, strtab_len);
    r->syms = r->data + s->offset;
    r->nsyms = s->size / 24;
    if (r->nsyms == 0)
        return 0;
    if (*strtab_len == 0 || (*strtab)[*strtab_len - 1] != 0)
        return -1;
    for (uint64_t k = 0; k < r->nsyms; k++) {
        const uint8_t *sym = r->syms + 24 * k;
        if (rd32(sym) >= *strtab_len)
            return -1;
        uint16_t shndx = rd16(sym + 6);
        /* Reserved indexes are fine but for these (the general reader handles
         * them); others past the count are refused. */
        if (shndx >= r->shnum && (shndx < SHN_LORESERVE || shndx == SHN_XINDEX ||
                                  shndx == SHN_COMMON || shndx == SHN_LIVEPATCH))
            return -1;
    }
    return 0;
}

static int read_undefined(const Reader *r, const uint8_t *strtab, PyObject **out)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return -2;
    *out = list;
    for (uint64_t k = 1; k < r->nsyms; k++) { /* not the null symbol */
        const uint8_t *sym = r->syms + 24 * k;
        if (rd16(sym + 6) != 0)
            continue;
        const uint8_t *name = strtab + rd32(sym);
        size_t n = strlen((const char *)name); /* the table ends with a NUL */
        if (n == 0)
            continue; /* an empty name is no symbol to resolve */
        PyObject *str = name_of(name, n, "surrogateescape");
        if (str == NULL)
            return -2;
        PyObject *item = PyTuple_Pack(2, str, (sym[4] >> 4) == STB_WEAK ? Py_True : Py_False);
        Py_DECREF(str);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            return -2;
        }
        Py_DECREF(item);
    }
    return 0;
}

/* facts.py _Reader._relocation_types: every relocation of an ALLOC section
 * has a type apply_relocate_add() handles (`handled`, 256 flags). */
static int check_relocation_types(const Reader *r, const uint8_t *handled)
{
    for (unsigned i = 0; i < r->shnum; i++) {
        const Shdr *s = &r->sh[i];
        if (s->type != SHT_RELA)
            continue;
        if (!(0 < s->info && s->info < r->shnum) || !(r->sh[s->info].flags & SHF_ALLOC))
            continue;
        if (s->size % 24)
            return -1;
        const uint8_t *p = r->data + s->offset;
        for (uint64_t k = 0; k < s->size; k += 24) {
            uint32_t type = rd32(p + k + 8);
            if (type >= 256 || !handled[type])
                return -1;
        }
    }
    return 0;
}

/* ---- exports (facts.py _Reader._exports) ---- */
typedef struct {
    uint64_t offset;
    int section;   /* -1: absolute, undefined or another reserved index */
    __int128 value; /* st_value + r_addend */
} Target;

static int target_cmp(const void *a, const void *b)
{
    uint64_t x = ((const Target *)a)->offset, y = ((const Target *)b)->offset;
    return x < y ? -1 : x > y;
}

static const Target *target_at(const Target *t, size_t n, uint64_t offset)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t[mid].offset < offset)
            lo = mid + 1;
        else if (t[mid].offset > offset)
            hi = mid;
        else
            return &t[mid];
    }
    return NULL;
}

/* The NUL-terminated string a field points at, or -1 (unusual). */
static int field_string(const Reader *r, const Target *t, PyObject **out)
{
    if (t->section < 0)
        return -1;
    uint64_t len;
    const uint8_t *text = content(r, (unsigned)t->section, &len);
    if (t->value < 0 || t->value >= (__int128)len)
        return -1;
    uint64_t off = (uint64_t)t->value;
    const uint8_t *nul = memchr(text + off, 0, len - off);
    if (nul == NULL)
        return -1;
    *out = str_of(text + off, (uint64_t)(nul - text) - off, "replace");
    return *out == NULL ? -2 : 0;
}

static int read_exports(const Reader *r, unsigned table, PyObject *list)
{
    /* the table's relocations, by offset */
    size_t count = 0;
    for (unsigned i = 0; i < r->shnum; i++) {
        const Shdr *s = &r->sh[i];
        if (s->type != SHT_RELA || s->info != table)
            continue;
        if ((s->entsize != 0 && s->entsize != 24) || s->size % 24)
            return -1;
        count += s->size / 24;
    }
    if (count == 0)
        return -1;
    Target *targets = PyMem_Malloc(sizeof(Target) * count);
    if (targets == NULL)
        return -2;
    int status = -1;
    int type_seen = 0;
    uint32_t type0 = 0;
    size_t n = 0;
    for (unsigned i = 0; i < r->shnum; i++) {
        const Shdr *s = &r->sh[i];
        if (s->type != SHT_RELA || s->info != table)
            continue;
        const uint8_t *p = r->data + s->offset;
        for (uint64_t k = 0; k < s->size; k += 24, n++) {
            uint64_t info = rd64(p + k + 8);
            uint32_t type = (uint32_t)info;
            if (!type_seen) {
                type0 = type;
                type_seen = 1;
            } else if (type != type0) {
                goto out; /* more than one type */
            }
            uint64_t sym = info >> 32;
            if (sym >= r->nsyms)
                goto out;
            const uint8_t *e = r->syms + 24 * sym;
            uint16_t shndx = rd16(e + 6);
            targets[n].offset = rd64(p + k);
            targets[n].section = 0 < shndx && shndx < SHN_LORESERVE ? shndx : -1;
            targets[n].value = (__int128)rd64(e + 8) + (int64_t)rd64(p + k + 16);
        }
    }
    qsort(targets, n, sizeof(Target), target_cmp);
    for (size_t k = 1; k < n; k++)
        if (targets[k].offset == targets[k - 1].offset)
            goto out; /* two relocations at one offset */
    uint64_t field;
    if (type0 == R_X86_64_PC32)
        field = 4;
    else if (type0 == R_X86_64_64)
        field = 8;
    else
        goto out;
    const Shdr *ts = &r->sh[table];
    uint64_t size = ts->size;
    int strings = r->first[W_KSYMTAB_STRINGS];
    uint64_t nfields;
    if (size % (2 * field) && !(size % (3 * field))) {
        nfields = 3;
    } else if (size % (3 * field) && !(size % (2 * field))) {
        nfields = 2;
    } else {
        const Target *third = target_at(targets, n, 2 * field);
        nfields = third == NULL || (strings >= 0 && third->section == strings) ? 3 : 2;
    }
    uint64_t entsize = nfields * field;
    if (size % entsize)
        goto out;
    uint64_t entries = size / entsize;
    int k = ts->wanted - W_KSYMTAB0;
    const uint8_t *flags = NULL;
    int fl = r->first[W_KFLAGSTAB];
    if (fl >= 0 && k == 0) { /* one byte per entry, KSYM_FLAG_GPL_ONLY */
        uint64_t flen;
        flags = content(r, (unsigned)fl, &flen);
        if (flen < entries)
            goto out;
    }
    const uint8_t *crcs = NULL;
    int crc = r->first[W_KCRCTAB0 + k];
    if (crc >= 0 && r->sh[crc].type != SHT_NOBITS) {
        if (r->sh[crc].size != 4 * entries)
            goto out;
        for (unsigned i = 0; i < r->shnum; i++)
            if (r->sh[i].type == SHT_RELA && r->sh[i].info == (unsigned)crc)
                goto out; /* CRCs by relocation (before v6.5): the general reader's */
        uint64_t clen;
        crcs = content(r, (unsigned)crc, &clen);
    }
    for (uint64_t e = 0; e < entries; e++) {
        uint64_t base = e * entsize;
        const Target *value = target_at(targets, n, base);
        const Target *name_at = target_at(targets, n, base + field);
        if (value == NULL || name_at == NULL) {
            status = -1;
            goto out; /* a field not relocated */
        }
        PyObject *namespace = NULL, *name = NULL;
        if (nfields == 3) {
            const Target *ns = target_at(targets, n, base + 2 * field);
            if (ns != NULL && ns->section >= 0) {
                status = field_string(r, ns, &namespace);
                if (status < 0)
                    goto out;
            }
        }
        if (namespace == NULL) {
            namespace = PyUnicode_FromStringAndSize("", 0);
            if (namespace == NULL) {
                status = -2;
                goto out;
            }
        }
        status = field_string(r, name_at, &name);
        if (status < 0) {
            Py_DECREF(namespace);
            goto out;
        }
        int gpl = flags ? (flags[e] & KSYM_FLAG_GPL_ONLY) != 0 : KSYMTAB[k].gpl_only;
        PyObject *crc_value = crcs ? PyLong_FromUnsignedLong(rd32(crcs + 4 * e))
                                   : Py_NewRef(Py_None);
        PyObject *item = crc_value ? PyTuple_Pack(4, name, gpl ? Py_True : Py_False, namespace,
                                                  crc_value)
                                   : NULL;
        Py_DECREF(name);
        Py_DECREF(namespace);
        Py_XDECREF(crc_value);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            status = -2;
            goto out;
        }
        Py_DECREF(item);
    }
    status = 0;
out:
    PyMem_Free(targets);
    return status;
}

/* ---- the whole module (facts.py _Reader.facts) ---- */

/* The facts tuple:
 *   (machine, signed, modinfo_name, vermagic, license, import_ns, intree,
 *    staging, livepatch, has_this_module, struct_name, versions_format,
 *    versions, has_symtab, undefined, exports)
 * or None (unusual).  NULL with an exception set on memory errors. */
static PyObject *facts(const uint8_t *data, uint64_t size, const uint8_t *handled)
{
    Reader r;
    PyObject *modinfo_name = NULL, *vermagic = NULL, *license = NULL, *import_ns = NULL;
    PyObject *struct_name = NULL, *versions = NULL, *undefined = NULL, *exports = NULL;
    PyObject *result = NULL;
    int versions_format = VERSIONS_NONE, status = reader_init(&r, data, size);
    if (status < 0)
        goto out;

    /* .modinfo */
    uint64_t mlen = 0;
    const uint8_t *mi = r.data;
    if (r.first[W_MODINFO] >= 0)
        mi = content(&r, (unsigned)r.first[W_MODINFO], &mlen);
    status = -2;
    if (!(modinfo_name = modinfo_get(mi, mlen, "name")) ||
        !(vermagic = modinfo_get(mi, mlen, "vermagic")) ||
        !(license = modinfo_get(mi, mlen, "license")))
        goto out;
    PyObject *ns_list = PyList_New(0);
    if (ns_list == NULL)
        goto out;
    for (int64_t at = modinfo_find(mi, mlen, "import_ns", 0); at >= 0;
         at = modinfo_find(mi, mlen, "import_ns", (uint64_t)at)) {
        PyObject *v = modinfo_value(mi, mlen, (uint64_t)at);
        if (v == NULL || PyList_Append(ns_list, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(ns_list);
            goto out;
        }
        Py_DECREF(v);
    }
    import_ns = PyList_AsTuple(ns_list);
    Py_DECREF(ns_list);
    if (import_ns == NULL)
        goto out;
    int intree = modinfo_find(mi, mlen, "intree", 0) >= 0;
    int staging = modinfo_find(mi, mlen, "staging", 0) >= 0;
    int livepatch = modinfo_find(mi, mlen, "livepatch", 0) >= 0;

    /* struct module's name */
    int this = r.first[W_THIS_MODULE];
    const uint8_t *sn = r.data;
    uint64_t snlen = 0;
    if (this >= 0 && r.sh[this].type != SHT_NOBITS) {
        uint64_t tlen;
        const uint8_t *t = content(&r, (unsigned)this, &tlen);
        if (tlen > THIS_MODULE_NAME_OFFSET) {
            sn = t + THIS_MODULE_NAME_OFFSET;
            snlen = tlen - THIS_MODULE_NAME_OFFSET;
            if (snlen > MODULE_NAME_LEN)
                snlen = MODULE_NAME_LEN;
            const uint8_t *nul = memchr(sn, 0, snlen);
            if (nul)
                snlen = (uint64_t)(nul - sn);
        }
    }
    if (!(struct_name = str_of(sn, snlen, "replace")))
        goto out;

    if ((status = read_versions(&r, &versions_format, &versions)) < 0)
        goto out;

    int has_symtab = 0;
    for (unsigned i = 0; i < r.shnum; i++)
        has_symtab |= r.sh[i].type == SHT_SYMTAB;
    status = -2;
    if (!(undefined = PyList_New(0)) || !(exports = PyList_New(0)))
        goto out;
    if (has_symtab) {
        const uint8_t *strtab;
        uint64_t strtab_len;
        if ((status = read_symtab(&r, &strtab, &strtab_len)) < 0)
            goto out;
        status = -1;
        for (unsigned i = 0; i < r.shnum; i++)
            if (r.sh[i].flags & SHF_RELA_LIVEPATCH)
                goto out;
        Py_DECREF(undefined);
        undefined = NULL;
        if ((status = read_undefined(&r, strtab, &undefined)) < 0)
            goto out;
        if (r.machine == EM_X86_64 && (status = check_relocation_types(&r, handled)) < 0)
            goto out;
        int any = 0;
        for (unsigned i = 0; i < r.shnum; i++) {
            int w = r.sh[i].wanted;
            any |= w >= W_KSYMTAB0 && w < W_KCRCTAB0 && r.sh[i].type != SHT_NOBITS && r.sh[i].size;
        }
        if (any) {
            status = -1;
            if (r.machine != EM_X86_64)
                goto out;
            for (unsigned i = 0; i < r.shnum; i++) {
                int w = r.sh[i].wanted;
                if (w >= W_KSYMTAB0 && w < W_KCRCTAB0 && r.sh[i].type != SHT_NOBITS &&
                    r.sh[i].size && (status = read_exports(&r, i, exports)) < 0)
                    goto out;
            }
        }
    }
    result = Py_BuildValue("(HOOOOOOOOOOiOOOO)", r.machine, r.signed_ ? Py_True : Py_False,
                           modinfo_name, vermagic, license, import_ns,
                           intree ? Py_True : Py_False, staging ? Py_True : Py_False,
                           livepatch ? Py_True : Py_False, this >= 0 ? Py_True : Py_False,
                           struct_name, versions_format, versions,
                           has_symtab ? Py_True : Py_False, undefined, exports);
    status = result == NULL ? -2 : 0;
out:
    PyMem_Free(r.sh);
    Py_XDECREF(modinfo_name);
    Py_XDECREF(vermagic);
    Py_XDECREF(license);
    Py_XDECREF(import_ns);
    Py_XDECREF(struct_name);
    Py_XDECREF(versions);
    Py_XDECREF(undefined);
    Py_XDECREF(exports);
    if (status == -2) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    if (status == -1)
        Py_RETURN_NONE;
    return result;
}

static int get_handled(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len != 256) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "handled: 256 flags, one per relocation type");
        return -1;
    }
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer data, handled;
    PyObject *h;
    if (!PyArg_ParseTuple(args, "y*O", &data, &h))
        return NULL;
    if (get_handled(h, &handled) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *out = facts(data.buf, (uint64_t)data.len, handled.buf);
    PyBuffer_Release(&handled);
    PyBuffer_Release(&data);
    return out;
}

static PyObject *scan_path(PyObject *self, PyObject *args)
{
    PyObject *path, *h;
    Py_buffer handled;
    if (!PyArg_ParseTuple(args, "O&O", PyUnicode_FSConverter, &path, &h))
        return NULL;
    if (get_handled(h, &handled) < 0) {
        Py_DECREF(path);
        return NULL;
    }
    /* read(), not mmap(): a file truncated while mapped would be SIGBUS */
    PyObject *out = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    int fd = open(PyBytes_AS_STRING(path), O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        size_t cap = (size_t)st.st_size + 1; /* one more: EOF seen in one read */
        buf = malloc(cap);
        while (buf != NULL) {
            ssize_t got = read(fd, buf + len, cap - len);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0)
                break;
            if (got == 0) {
                ok = 1;
                break;
            }
            len += (size_t)got;
            if (len == cap) { /* it grew */
                uint8_t *more = realloc(buf, cap *= 2);
                if (more == NULL)
                    break;
                buf = more;
            }
        }
    }
    if (fd >= 0)
        close(fd);
    Py_END_ALLOW_THREADS
    if (ok && len >= 64 && memcmp(buf, "\x7f" "ELF", 4) == 0)
        out = facts(buf, (uint64_t)len, handled.buf);
    else /* facts.py reads it the Python way and says what is wrong, if anything */
        out = Py_NewRef(Py_None);
    free(buf);
    PyBuffer_Release(&handled);
    Py_DECREF(path);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, handled) -> facts tuple or None: read a decompressed module's bytes."},
    {"scan_path", scan_path, METH_VARARGS,
     "scan_path(path, handled) -> facts tuple or None: read an uncompressed module file."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "klpsym.load._cfacts",
    "The check's module reader, compiled (see klpsym/load/facts.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__cfacts(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *tables = PyDict_New();
    if (tables == NULL)
        goto fail;
    for (int k = 0; k < N_KSYMTAB; k++) {
        PyObject *v = Py_BuildValue("(Os)", KSYMTAB[k].gpl_only ? Py_True : Py_False, KCRCTAB[k]);
        if (v == NULL || PyDict_SetItemString(tables, KSYMTAB[k].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(tables);
            goto fail;
        }
        Py_DECREF(v);
    }
    if (PyModule_AddObject(m, "KSYMTABS", tables) < 0) {
        Py_DECREF(tables);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
