// SPDX-License-Identifier: GPL-2.0
/*
 * klpsym_dkms_example: built and installed by DKMS through klpsym (dkms.conf).
 *
 * Calls kallsyms_lookup_name(), which is not exported since Linux 5.7 (commit
 * 0bd476e6c671), and reads the unexported variable kptr_restrict.  Without
 * klpsym, modpost refuses both; converted, the module loader resolves them
 * through kallsyms when the module loads.  It prints what it found:
 *
 *   klptest dkms: fn=<kallsyms_lookup_name> addr=<&kptr_restrict> got=<lookup> value=N match=1
 */
#include <linux/module.h>
#include <linux/kallsyms.h>

extern int kptr_restrict;

static int __init klpsym_dkms_example_init(void)
{
	unsigned long got = kallsyms_lookup_name("kptr_restrict");

	pr_info("klptest dkms: fn=%px addr=%px got=%px value=%d match=%d\n",
		(void *)kallsyms_lookup_name, (void *)&kptr_restrict, (void *)got,
		kptr_restrict, got == (unsigned long)&kptr_restrict && got != 0);
	return 0;
}

static void __exit klpsym_dkms_example_exit(void)
{
}

module_init(klpsym_dkms_example_init);
module_exit(klpsym_dkms_example_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym example: a DKMS module using unexported symbols");
