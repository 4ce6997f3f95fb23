// SPDX-License-Identifier: GPL-2.0
/*
 * tm_provider: one of two modules in one directory.  Exports
 * tm_provider_lookup(), which calls the unexported kallsyms_lookup_name().
 */
#include <linux/module.h>
#include <linux/kallsyms.h>

unsigned long tm_provider_lookup(const char *name)
{
	return kallsyms_lookup_name(name);
}
EXPORT_SYMBOL_GPL(tm_provider_lookup);

static int __init tm_provider_init(void)
{
	pr_info("klptest tm_provider: fn=%px\n", (void *)kallsyms_lookup_name);
	return 0;
}

static void __exit tm_provider_exit(void)
{
}

module_init(tm_provider_init);
module_exit(tm_provider_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: exports a function built on an unexported one");
