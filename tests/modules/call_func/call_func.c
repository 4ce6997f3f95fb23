// SPDX-License-Identifier: GPL-2.0
/*
 * call_func: a direct call to an unexported function.
 *
 * kallsyms_lookup_name() lost its EXPORT_SYMBOL in 5.7 (commit 0bd476e6c671,
 * "kallsyms: unexport kallsyms_lookup_name() and kallsyms_on_each_symbol()").
 * Without klpsym this module does not load ("Unknown symbol
 * kallsyms_lookup_name"); converted, the call (R_X86_64_PLT32 in .text) and
 * the address-of (R_X86_64_32S) are resolved by the livepatch relocation code.
 *
 * The answers are checked against addresses the module gets the ordinary way,
 * from EXPORTED symbols (init_task: data, _printk: text), and the test also
 * compares every printed address with /proc/kallsyms read in the same boot.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include <linux/sched/task.h>	/* init_task */

static noinline int check(const char *name, unsigned long want)
{
	/* The direct call to the unexported function. */
	unsigned long got = kallsyms_lookup_name(name);

	pr_info("klptest call_func: name=%s got=%px want=%px match=%d\n",
		name, (void *)got, (void *)want, got == want && got != 0);
	return got == want && got != 0;
}

static int __init call_func_init(void)
{
	int ok = 1;

	ok &= check("init_task", (unsigned long)&init_task);
	ok &= check("_printk", (unsigned long)_printk);
	pr_info("klptest call_func: fn=%px\n", (void *)kallsyms_lookup_name);
	pr_info("klptest call_func: result=%s\n", ok ? "OK" : "MISMATCH");
	return 0;
}

static void __exit call_func_exit(void)
{
}

module_init(call_func_init);
module_exit(call_func_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: direct call to unexported kallsyms_lookup_name()");
