// SPDX-License-Identifier: GPL-2.0
/*
 * snippet: built by plain `make` through the klpsym Makefile snippet.  Calls
 * the unexported kallsyms_lookup_name() and reads the unexported
 * kptr_restrict.
 */
#include <linux/module.h>
#include <linux/kallsyms.h>

extern int kptr_restrict;

static int __init snippet_init(void)
{
	unsigned long got = kallsyms_lookup_name("kptr_restrict");

	pr_info("klptest snippet: addr=%px got=%px fn=%px value=%d match=%d\n",
		(void *)&kptr_restrict, (void *)got, (void *)kallsyms_lookup_name,
		kptr_restrict, got == (unsigned long)&kptr_restrict && got != 0);
	return 0;
}

static void __exit snippet_exit(void)
{
}

module_init(snippet_init);
module_exit(snippet_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: built with the plain-make snippet");
