"""The one compiled part of klpsym: the check's module reader
(src/klpsym/load/_cfacts.c).  It is optional: where it cannot be built
(no C compiler or Python headers), klpsym works the same with its
pure-Python reader, only slower (`klpsym check` of a whole kernel's
modules takes about 1.7 times as long: benchmarks/check_all.py).  Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "klpsym.load._cfacts", ["src/klpsym/load/_cfacts.c"], optional=True,
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
)])
