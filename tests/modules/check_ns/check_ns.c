// SPDX-License-Identifier: GPL-2.0
/*
 * check_ns: uses crypto_cipher_setkey, exported by vmlinux in the namespace
 * CRYPTO_INTERNAL (Debian 6.1), and imports it, so it loads.  The test's
 * copy without the import_ns entry in .modinfo fails: "module uses symbol
 * (crypto_cipher_setkey) from namespace CRYPTO_INTERNAL, but does not import it."
 */
#include <linux/module.h>
#include <linux/version.h>
#include <crypto/internal/cipher.h>

static int __init check_ns_init(void)
{
	pr_info("klptest check_ns: setkey=%px\n", crypto_cipher_setkey);
	return 0;
}

static void __exit check_ns_exit(void)
{
}

module_init(check_ns_init);
module_exit(check_ns_exit);
/* The namespace is a string literal since v6.13 ("module:
 * Convert symbol namespace to string literal"), a bare word before. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
MODULE_IMPORT_NS("CRYPTO_INTERNAL");
#else
MODULE_IMPORT_NS(CRYPTO_INTERNAL);
#endif
MODULE_LICENSE("GPL");
