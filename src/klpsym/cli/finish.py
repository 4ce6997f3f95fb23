"""The flags for what happens to a converted module after the rewrite (the
load-time guard, signing), shared by ``convert`` and ``build``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a command runs: `klpsym --help` stays fast
    from klpsym.kernel.target import TargetKernel
    from klpsym.klp.sign import Signer

FINISH_HELP = """\
load-time guard (default on):
  A kernel built without CONFIG_LIVEPATCH loads a converted module but skips its
  klp relocations, so the module would run with zero where the unexported
  symbols' addresses should be.  klpsym therefore adds an undefined reference
  to klp_enable_patch (exported only by livepatch kernels; with its CRC under
  CONFIG_MODVERSIONS): there the load fails with "Unknown symbol
  klp_enable_patch" instead.  --no-guard leaves it out.

signing:
  Converting invalidates a module's signature; it is removed.  The output is
  signed with the kernel's scripts/sign-file and CONFIG_MODULE_SIG_HASH when
  --sign-key and --sign-cert are given, or when the build dir has its own key
  (CONFIG_MODULE_SIG_KEY and certs/signing_key.x509; distribution headers
  have none)."""


def add_finish_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load-time guard and signing")
    g.add_argument("--no-guard", action="store_true",
                   help="do not add the klp_enable_patch reference that makes the module refuse "
                        "to load on kernels without CONFIG_LIVEPATCH")
    g.add_argument("--sign-key", metavar="KEY", type=Path,
                   help="sign the output with this private key (PEM); needs --sign-cert")
    g.add_argument("--sign-cert", metavar="CERT", type=Path,
                   help="the X.509 certificate (PEM or DER) of --sign-key")


def signer_from_args(args: argparse.Namespace,
                     target: TargetKernel) -> tuple[Signer | None, list[str]]:
    from klpsym.klp.sign import resolve_signer

    return resolve_signer(target, args.sign_key, args.sign_cert)
