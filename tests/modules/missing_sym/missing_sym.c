// SPDX-License-Identifier: GPL-2.0
/*
 * missing_sym: references a symbol that no kernel has, next to an unexported
 * one.  `klpsym build` must fail (modpost stays strict) naming
 * klpsym_test_no_such_symbol and this module, and must not complain about
 * kallsyms_lookup_name, which it resolves.
 */
#include <linux/module.h>
#include <linux/kallsyms.h>

extern int klpsym_test_no_such_symbol(void);

static int __init missing_sym_init(void)
{
	pr_info("klptest missing_sym: %d %px\n", klpsym_test_no_such_symbol(),
		(void *)kallsyms_lookup_name("init_task"));
	return 0;
}

module_init(missing_sym_init);
MODULE_LICENSE("GPL");
