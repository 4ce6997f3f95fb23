// SPDX-License-Identifier: GPL-2.0
/*
 * tm_user: uses tm_provider's export (a module export from the same build,
 * which must stay an ordinary symbol) and the unexported dmesg_restrict
 * (converted).  Prints both so the test can compare them with /proc/kallsyms.
 */
#include <linux/module.h>
#include <linux/printk.h>

extern int dmesg_restrict;
unsigned long tm_provider_lookup(const char *name);

static int __init tm_user_init(void)
{
	unsigned long got = tm_provider_lookup("dmesg_restrict");

	pr_info("klptest tm_user: addr=%px got=%px value=%d match=%d\n",
		(void *)&dmesg_restrict, (void *)got, dmesg_restrict,
		got == (unsigned long)&dmesg_restrict && got != 0);
	return 0;
}

static void __exit tm_user_exit(void)
{
}

module_init(tm_user_init);
module_exit(tm_user_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a module export from the same dir plus an unexported symbol");
